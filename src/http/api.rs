//! The transport-neutral request and response the auth handlers work on.
//! The proxy layer converts Pingora sessions to and from these, so nothing
//! below the handler layer sees a Pingora type.

use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderMap, Method};

#[derive(Debug)]
pub struct ApiRequest {
    pub method: Method,
    /// Normalized path.
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub client_ip: IpAddr,
    pub request_id: String,
    /// Came over the TLS listener: only the `https` origin of its host is
    /// then its own (the CSRF Origin check).
    pub tls: bool,
}

impl ApiRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn user_agent(&self) -> String {
        self.header("user-agent")
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_control())
            .take(256)
            .collect()
    }

    /// The client's per-IP budget key: its IPv4 address, or its IPv6
    /// network of `throttle.ipv6_prefix_len` bits (see [`crate::net`]).
    pub fn ip_throttle_key(&self, cfg: &crate::config::Config) -> ipnet::IpNet {
        crate::net::throttle_key(self.client_ip, cfg.throttle.ipv6_prefix_len)
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        let q = self.query.as_deref()?;
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

#[derive(Debug)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl ApiResponse {
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: Bytes::from(value.to_string()),
        }
    }

    /// A JSON body from a wire type (see [`crate::wire`]).
    pub fn serialized<T: serde::Serialize>(status: u16, value: &T) -> Self {
        Self::json_bytes(
            status,
            Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
        )
    }

    /// A JSON body already serialized.
    pub fn json_bytes(status: u16, body: Bytes) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json".into())],
            body,
        }
    }

    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: vec![],
            body: Bytes::new(),
        }
    }

    pub fn html(status: u16, html: String) -> Self {
        Self {
            status,
            headers: vec![
                ("content-type", "text/html; charset=utf-8".into()),
                (
                    "content-security-policy",
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'".into(),
                ),
                ("referrer-policy", "no-referrer".into()),
                ("x-frame-options", "DENY".into()),
            ],
            body: Bytes::from(html),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}
