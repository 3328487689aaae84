//! What the provider sees of a request: a borrowed view with just the
//! parts its endpoints read (method, path, query, headers for cookies,
//! client authentication and the Origin check, the form body) and the
//! caller as the account service names it. The front door that received
//! the request builds it (`crate::http` for `/auth/oauth/*` and discovery),
//! so the provider does not depend on the JSON front door's request type
//! (as the portal's [`crate::portal::PortalRequest`]).

use http::{HeaderMap, Method};

use crate::accounts::Client;

pub struct ProviderRequest<'a> {
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

impl ProviderRequest<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}
