//! TLS files: validated before Pingora sees them (a bad file would panic
//! inside the service), and a self-signed development pair generated when
//! both files are missing.

use std::io::Write;
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
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts
        .open(path)
        .map_err(|e| format!("writing '{}': {e}", path.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("writing '{}': {e}", path.display()))
}
