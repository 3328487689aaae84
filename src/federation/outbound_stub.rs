//! TEMPORARY: the shape of the shared outbound client (`crate::outbound`,
//! written by the lead) until it lands on main; it answers every request
//! with an error. Deleted at the merge (see `super::client`'s imports).

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
#[allow(dead_code)]
pub struct OutboundOptions {
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    pub max_body: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OutboundError(String);

pub struct Outbound {
    _options: OutboundOptions,
}

impl Outbound {
    pub fn new(options: OutboundOptions) -> Result<Self, OutboundError> {
        Ok(Self { _options: options })
    }

    pub async fn send(
        &self,
        _req: http::Request<Vec<u8>>,
    ) -> Result<http::Response<bytes::Bytes>, OutboundError> {
        Err(OutboundError("no outbound HTTP client in this build yet".into()))
    }
}
