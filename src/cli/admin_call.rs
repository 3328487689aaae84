//! Talking to the running gateway's admin listener, and `reload`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::accounts::admin::AdminCommand;
use crate::config::Config;

/// Send an admin command to the running gateway.
pub(super) fn via_admin_listener(
    cfg: &Config,
    cmd: &AdminCommand,
) -> Result<serde_json::Value, String> {
    let body = serde_json::to_vec(cmd).map_err(|e| e.to_string())?;
    let (ok, body) = admin_call(cfg, "POST", "/admin/users", &body)?;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    if ok {
        Ok(v)
    } else {
        Err(v["message"]
            .as_str()
            .unwrap_or("admin command failed")
            .to_string())
    }
}

/// Connect to the running gateway's admin listener and send one request
/// with the admin token (`Connection: close`; a JSON `body`, or none).
fn send(cfg: &Config, method: &str, path: &str, body: Option<&[u8]>) -> Result<TcpStream, String> {
    let addr = cfg
        .server
        .admin_listen
        .ok_or("the database is in use and server.admin_listen is disabled")?;
    let token = crate::server::admin_token(cfg)?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connecting to the admin listener {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(300))).ok();
    let content_type = match body {
        Some(_) => "Content-Type: application/json\r\n",
        None => "",
    };
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n",
        String::from_utf8_lossy(&token),
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body))
        .map_err(|e| format!("admin listener: {e}"))?;
    Ok(s)
}

/// One request to the running gateway's admin listener, with the admin
/// token; whether it answered 200, and the body.
pub(super) fn admin_call(
    cfg: &Config,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(bool, Vec<u8>), String> {
    let mut s = send(cfg, method, path, Some(body))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .map_err(|e| format!("admin listener: {e}"))?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("admin listener: bad response")?;
    let head = String::from_utf8_lossy(&resp[..split]);
    let ok = head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200");
    Ok((ok, resp[split + 4..].to_vec()))
}

/// A `GET` to the running gateway's admin listener whose answer is
/// streamed: a 200 body goes into `out` as it arrives (chunked or with a
/// length; never held whole); any other answer is an error with its
/// message. A body cut short (the connection closed before the last chunk
/// or the length) is an error.
pub(super) fn admin_stream(cfg: &Config, path: &str, out: &mut impl Write) -> Result<(), String> {
    use std::io::BufRead;
    let s = send(cfg, "GET", path, None)?;
    let failed = |e: std::io::Error| format!("admin listener: {e}");
    let mut r = std::io::BufReader::with_capacity(1 << 16, s);
    let mut line = String::new();
    let mut next_line = |r: &mut std::io::BufReader<TcpStream>| -> Result<String, String> {
        line.clear();
        match r.read_line(&mut line).map_err(failed)? {
            0 => Err("admin listener: the connection closed early".to_string()),
            _ => Ok(line.trim_end_matches(['\r', '\n']).to_string()),
        }
    };
    let status = next_line(&mut r)?;
    let ok = status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200");
    let (mut chunked, mut length) = (false, None);
    loop {
        let h = next_line(&mut r)?;
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':').unwrap_or((&h, ""));
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<u64>().ok();
        }
    }
    if !ok {
        // An error answer is small: its message is the error.
        let mut body = Vec::new();
        let _ = r.take(64 * 1024).read_to_end(&mut body);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        return Err(v["message"]
            .as_str()
            .map_or_else(|| format!("admin listener: {status}"), str::to_string));
    }
    let mut exactly = |r: &mut std::io::BufReader<TcpStream>, n: u64| -> Result<(), String> {
        let got = std::io::copy(&mut r.take(n), out).map_err(failed)?;
        if got == n {
            Ok(())
        } else {
            Err("admin listener: the answer was cut short".to_string())
        }
    };
    if chunked {
        loop {
            let size = next_line(&mut r)?;
            let size = size.split(';').next().unwrap_or("").trim();
            let n = u64::from_str_radix(size, 16)
                .map_err(|_| "admin listener: bad chunked answer".to_string())?;
            if n == 0 {
                // The trailers, if any, up to the empty line.
                while !next_line(&mut r)?.is_empty() {}
                return Ok(());
            }
            exactly(&mut r, n)?;
            if !next_line(&mut r)?.is_empty() {
                return Err("admin listener: bad chunked answer".to_string());
            }
        }
    }
    match length {
        Some(n) => exactly(&mut r, n),
        // Delimited by the close: the check of the file finds a cut.
        None => std::io::copy(&mut r, out).map(drop).map_err(failed),
    }
}

/// `portcullis reload`: ask the running gateway (through its admin
/// listener, with the admin token) to read its config again. The gateway
/// judges the file it was started with; this config only says where its
/// admin listener and data dir are.
pub fn reload_command(cfg: Config) -> Result<(), String> {
    if cfg.server.admin_listen.is_none() {
        return Err(
            "server.admin_listen is disabled: send SIGHUP to the gateway instead".to_string(),
        );
    }
    let (ok, body) = admin_call(&cfg, "POST", "/admin/reload", b"").map_err(|e| {
        format!("{e} (is the gateway running with this server.admin_listen and data_dir?)")
    })?;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    if ok {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    match v["problems"].as_array() {
        Some(problems) => {
            let list: Vec<&str> = problems.iter().filter_map(|p| p.as_str()).collect();
            Err(format!(
                "the gateway refused the reload; the previous config stays in force:\n  {}",
                list.join("\n  ")
            ))
        }
        None => Err(v["message"]
            .as_str()
            .unwrap_or("the reload failed")
            .to_string()),
    }
}
