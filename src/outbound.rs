//! The gateway's own outbound HTTP: to identity providers (discovery, JWKS,
//! token and userinfo endpoints), to webhook receivers and to relying
//! parties' back-channel logout endpoints. One client, one set of rules:
//!
//! - `https://` only, except `http://` to a loopback address (CONTRACT 8.1:
//!   local testing); anything else is refused before a socket is opened;
//! - certificates are checked against the public web roots plus the
//!   operator's `ca_file`, through rustls with ring (no OpenSSL, no second
//!   crypto stack);
//! - redirects are never followed (a provider or receiver that redirects
//!   gets its 3xx back to the caller, which treats it as a failure);
//! - every exchange has a deadline (connect + whole response), and a
//!   response body larger than `max_body` is an error rather than memory.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use url::Url;

/// How an [`Outbound`] client is made.
#[derive(Debug, Clone)]
pub struct OutboundOptions {
    /// Extra CAs (PEM) trusted beside the public web roots.
    pub ca_file: Option<PathBuf>,
    /// The deadline of one exchange, from connecting to the last body byte.
    pub timeout: Duration,
    /// The largest response body accepted, in bytes.
    pub max_body: usize,
}

impl Default for OutboundOptions {
    fn default() -> Self {
        OutboundOptions {
            ca_file: None,
            timeout: Duration::from_secs(10),
            max_body: 1024 * 1024,
        }
    }
}

/// Why an outbound exchange failed. Its text names the host, never a
/// header value or body (they may hold secrets).
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("refused URL {0}: only https, or http to a loopback address")]
    Scheme(String),
    #[error("bad URL: {0}")]
    Url(String),
    #[error("reading the CA file {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("building the HTTP client: {0}")]
    Build(String),
    #[error("{host} did not answer within {secs} s")]
    Timeout { host: String, secs: u64 },
    #[error("{host}: {reason}")]
    Transport { host: String, reason: String },
    #[error("{host} sent a body over {limit} bytes")]
    TooLarge { host: String, limit: usize },
}

/// The outbound client. Cheap to clone (one connection pool shared).
#[derive(Clone)]
pub struct Outbound {
    client: reqwest::Client,
    timeout: Duration,
    max_body: usize,
}

impl Outbound {
    pub fn new(options: OutboundOptions) -> Result<Self, OutboundError> {
        let roots = roots(options.ca_file.as_ref())?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| OutboundError::Build(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(options.timeout)
            .timeout(options.timeout)
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OutboundError::Build(e.to_string()))?;
        Ok(Outbound {
            client,
            timeout: options.timeout,
            max_body: options.max_body,
        })
    }

    /// The underlying client, for a library that speaks through
    /// `reqwest::Client` (e.g. an OpenID Connect client crate). It keeps
    /// this client's TLS roots, timeout and no-redirect policy, but NOT the
    /// scheme rule: check every URL you hand it with [`check_url`] first.
    pub fn reqwest(&self) -> &reqwest::Client {
        &self.client
    }

    /// Send one request and read the whole answer (any status: a 4xx or
    /// 5xx is an answer, not an error; the caller judges it).
    pub async fn send(
        &self,
        request: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Bytes>, OutboundError> {
        let url = Url::parse(&request.uri().to_string())
            .map_err(|e| OutboundError::Url(e.to_string()))?;
        check_url(&url)?;
        let host = host_of(&url);
        let (parts, body) = request.into_parts();
        let mut builder = self.client.request(parts.method, url).body(body);
        for (name, value) in parts.headers.iter() {
            builder = builder.header(name, value);
        }
        let mut response = builder.send().await.map_err(|e| self.failure(&host, e))?;
        let mut out = http::Response::builder().status(response.status());
        for (name, value) in response.headers() {
            out = out.header(name, value);
        }
        if response
            .content_length()
            .is_some_and(|n| n > self.max_body as u64)
        {
            return Err(OutboundError::TooLarge {
                host,
                limit: self.max_body,
            });
        }
        let mut body = BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.failure(&host, e))? {
            if body.len() + chunk.len() > self.max_body {
                return Err(OutboundError::TooLarge {
                    host,
                    limit: self.max_body,
                });
            }
            body.extend_from_slice(&chunk);
        }
        out.body(body.freeze())
            .map_err(|e| OutboundError::Transport {
                host,
                reason: e.to_string(),
            })
    }

    /// `GET url` with `Accept: application/json`.
    pub async fn get(&self, url: &Url) -> Result<http::Response<Bytes>, OutboundError> {
        let request = http::Request::get(url.as_str())
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|e| OutboundError::Url(e.to_string()))?;
        self.send(request).await
    }

    /// `POST url` with a form body (`application/x-www-form-urlencoded`)
    /// and extra headers (e.g. `Authorization`).
    pub async fn post_form(
        &self,
        url: &Url,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Result<http::Response<Bytes>, OutboundError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish()
            .into_bytes();
        self.post(url, "application/x-www-form-urlencoded", body, headers)
            .await
    }

    /// `POST url` with a JSON body (already encoded) and extra headers.
    pub async fn post_json(
        &self,
        url: &Url,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<http::Response<Bytes>, OutboundError> {
        self.post(url, "application/json", body, headers).await
    }

    async fn post(
        &self,
        url: &Url,
        content_type: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<http::Response<Bytes>, OutboundError> {
        let mut request = http::Request::post(url.as_str())
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::ACCEPT, "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(body)
            .map_err(|e| OutboundError::Url(e.to_string()))?;
        self.send(request).await
    }

    fn failure(&self, host: &str, e: reqwest::Error) -> OutboundError {
        if e.is_timeout() {
            return OutboundError::Timeout {
                host: host.to_string(),
                secs: self.timeout.as_secs().max(1),
            };
        }
        // reqwest's text can carry the URL (and so a query string): keep
        // only the kind of failure and its innermost cause.
        let mut reason = if e.is_connect() {
            "could not connect".to_string()
        } else if e.is_body() || e.is_decode() {
            "broken response body".to_string()
        } else {
            "request failed".to_string()
        };
        let mut source = std::error::Error::source(&e);
        let mut last = None;
        while let Some(s) = source {
            last = Some(s.to_string());
            source = s.source();
        }
        if let Some(last) = last {
            reason.push_str(": ");
            reason.push_str(&last);
        }
        OutboundError::Transport {
            host: host.to_string(),
            reason,
        }
    }
}

/// The scheme rule: `https://`, or `http://` to a loopback address
/// (`localhost`, 127.0.0.0/8, ::1). No user info in the URL.
pub fn check_url(url: &Url) -> Result<(), OutboundError> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err(OutboundError::Url("credentials in a URL".into()));
    }
    let Some(host) = url.host() else {
        return Err(OutboundError::Url("no host".into()));
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&host) => Ok(()),
        _ => Err(OutboundError::Scheme(format!(
            "{}://{}",
            url.scheme(),
            host_of(url)
        ))),
    }
}

/// An `http://` URL to a loopback address (`localhost`, 127.0.0.0/8, ::1):
/// the one plain-HTTP target the gateway accepts (local testing).
pub fn loopback_http(url: &Url) -> bool {
    url.scheme() == "http" && url.host().is_some_and(|h| is_loopback(&h))
}

fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
        url::Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

fn host_of(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    }
}

fn roots(ca_file: Option<&PathBuf>) -> Result<rustls::RootCertStore, OutboundError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let Some(path) = ca_file else {
        return Ok(roots);
    };
    let ca = |reason: String| OutboundError::Ca {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| ca(e.to_string()))?;
    let mut found = 0;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| ca(e.to_string()))?;
        roots.add(cert).map_err(|e| ca(e.to_string()))?;
        found += 1;
    }
    if found == 0 {
        return Err(ca("no certificate in it".into()));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn https_anywhere_http_only_to_loopback() {
        assert!(check_url(&url("https://idp.example.com/x")).is_ok());
        assert!(check_url(&url("http://127.0.0.1:8080/x")).is_ok());
        assert!(check_url(&url("http://127.9.9.9/x")).is_ok());
        assert!(check_url(&url("http://[::1]:9/x")).is_ok());
        assert!(check_url(&url("http://LocalHost:9/x")).is_ok());
        for bad in [
            "http://idp.example.com/x",
            "http://10.0.0.1/x",
            "http://[::2]/x",
            "http://localhost.evil.test/x",
            "ftp://127.0.0.1/x",
            "file:///etc/passwd",
            "https://user:pw@idp.example.com/",
        ] {
            assert!(check_url(&url(bad)).is_err(), "{bad} should be refused");
        }
    }

    #[tokio::test]
    async fn refused_urls_never_leave_and_bodies_are_capped() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for n in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = if n == 0 {
                    "x".repeat(10)
                } else {
                    "y".repeat(100)
                };
                let answer = format!(
                    "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:1/\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        let out = Outbound::new(OutboundOptions {
            max_body: 50,
            ..Default::default()
        })
        .unwrap();
        let ok = out.get(&url(&format!("http://{addr}/a"))).await.unwrap();
        // A redirect comes back as an answer; it is not followed.
        assert_eq!(ok.status(), 302);
        assert_eq!(ok.body().as_ref(), b"xxxxxxxxxx");
        let big = out.get(&url(&format!("http://{addr}/b"))).await;
        assert!(
            matches!(big, Err(OutboundError::TooLarge { .. })),
            "{big:?}"
        );
        let refused = out.get(&url("http://example.com/")).await;
        assert!(matches!(refused, Err(OutboundError::Scheme(_))));
    }
}
