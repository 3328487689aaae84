//! TLS files: validated before Pingora sees them (a bad file would panic
//! inside the service), and a self-signed development pair generated when
//! both files are missing.

use std::path::Path;

/// Check that `cert` holds at least one certificate and `key` a private key.
pub fn check_pair(cert: &Path, key: &Path) -> Result<(), String> {
    let cert_pem = std::fs::read(cert)
        .map_err(|e| format!("cannot read '{}': {}", cert.display(), e.kind()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("'{}' is not a PEM certificate file", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("'{}' holds no certificate", cert.display()));
    }
    let key_pem =
        std::fs::read(key).map_err(|e| format!("cannot read '{}': {}", key.display(), e.kind()))?;
    match rustls_pemfile::private_key(&mut key_pem.as_slice()) {
        Ok(Some(_)) => Ok(()),
        _ => Err(format!("'{}' holds no PEM private key", key.display())),
    }
}

/// Generate a self-signed pair for localhost if both files are missing.
/// Returns true when a pair was generated.
pub fn ensure_dev_pair(cert: &Path, key: &Path) -> Result<bool, String> {
    if cert.exists() || key.exists() {
        return Ok(false);
    }
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ck = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("generating a dev certificate: {e}"))?;
    for p in [cert, key] {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("creating '{}': {e}", dir.display()))?;
        }
    }
    write_file(key, ck.key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_file(cert, ck.cert.pem().as_bytes(), 0o644)?;
    tracing::warn!(cert = %cert.display(), "generated a self-signed development certificate");
    Ok(true)
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    use crate::fsutil::{write_atomic, Existing};
    write_atomic(path, data, mode, Existing::Refuse)
        .map_err(|e| format!("writing '{}': {e}", path.display()))
}

/// Slow TLS clients: Pingora 0.9 gives every handshake a fixed 60 s
/// (`services/listening.rs`), so a client that opens the port and sends
/// nothing, or half a ClientHello, holds a connection and a task that long.
/// This hook runs before Pingora's handshake and reads the client's whole
/// ClientHello within `timeout` (the slowloris deadline), else drops the
/// connection; the bytes read are put back for the handshake. What follows
/// the ClientHello (the client's second flight) keeps Pingora's 60 s.
pub struct ClientHelloDeadline {
    pub timeout: std::time::Duration,
}

/// A ClientHello larger than this is handed to rustls unread to its end
/// (rustls refuses it on its own terms).
const MAX_HELLO: usize = 64 * 1024;

#[async_trait::async_trait]
impl pingora::listeners::PreTlsProcess for ClientHelloDeadline {
    async fn process(
        &self,
        stream: &mut pingora::protocols::l4::stream::Stream,
    ) -> pingora::Result<()> {
        let mut read = Vec::with_capacity(1024);
        let outcome = tokio::time::timeout(self.timeout, read_hello(stream, &mut read)).await;
        // Put back what was read, whole (the rewind buffer is a stack).
        stream.rewind(&read);
        match outcome {
            Ok(_) => Ok(()),
            Err(_) => Err(pingora::Error::explain(
                pingora::ErrorType::ReadTimedout,
                "no complete ClientHello within the header deadline",
            )),
        }
    }
}

/// Read TLS handshake records into `buf` until they hold the whole first
/// handshake message (the ClientHello, possibly fragmented over records).
/// Stops early, leaving the verdict to rustls, at end of stream, on a read
/// error, on a record that is not a handshake, or past [`MAX_HELLO`].
async fn read_hello<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut at = 0; // start of the current record in `buf`
    let mut message = Vec::new(); // handshake payload gathered so far
    loop {
        // The record header, then its body.
        if !fill(stream, buf, at + 5).await || buf[at] != 0x16 {
            return;
        }
        let len = u16::from_be_bytes([buf[at + 3], buf[at + 4]]) as usize;
        if at + 5 + len > MAX_HELLO || !fill(stream, buf, at + 5 + len).await {
            return;
        }
        message.extend_from_slice(&buf[at + 5..at + 5 + len]);
        at += 5 + len;
        if message.len() >= 4 {
            let want = 4 + u32::from_be_bytes([0, message[1], message[2], message[3]]) as usize;
            if message.len() >= want || want > MAX_HELLO {
                return;
            }
        }
    }

    async fn fill<S: tokio::io::AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>, n: usize) -> bool {
        let mut chunk = [0u8; 4096];
        while buf.len() < n {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
        true
    }
}
