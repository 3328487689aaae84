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

/// One request to the running gateway's admin listener, with the admin
/// token; whether it answered 200, and the body.
pub(super) fn admin_call(
    cfg: &Config,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(bool, Vec<u8>), String> {
    let addr = cfg
        .server
        .admin_listen
        .ok_or("the database is in use and server.admin_listen is disabled")?;
    let token = crate::server::admin_token(cfg)?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connecting to the admin listener {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(300))).ok();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        String::from_utf8_lossy(&token),
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body))
        .map_err(|e| format!("admin listener: {e}"))?;
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
