//! What the portal sees of a request: a borrowed view with just the parts
//! its pages read (method, path, query, headers for cookies and the Origin
//! check, the form body) and the caller as the account service names it.
//! The front door that received the request builds it
//! (`crate::http` for `/auth/ui/*`), so the portal does not depend on the
//! JSON front door's request type.

use http::{HeaderMap, Method};

use crate::accounts::Client;

pub struct PortalRequest<'a> {
    pub method: &'a Method,
    /// Normalized path.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// Who calls: IP, user agent, request id.
    pub client: Client,
    /// Came over the TLS listener (the Origin check).
    pub tls: bool,
}

impl PortalRequest<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query?.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The form fields of a urlencoded POST; none for anything else.
    pub fn form(&self) -> Vec<(String, String)> {
        let urlencoded = self
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        if *self.method != Method::POST || !urlencoded {
            return vec![];
        }
        url::form_urlencoded::parse(self.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }
}
