//! `keys rotate`.

use super::admin_call::admin_call;
use super::KeysCommand;
use crate::config::Config;

/// `portcullis keys rotate`: a new key in the data dir's key set, then a
/// reload of the running gateway (if one answers on the admin listener).
pub fn keys_command(cfg: Config, cmd: KeysCommand) -> Result<(), String> {
    let KeysCommand::Rotate { activate_in } = cmd;
    crate::server::create_private_dir(&cfg.server.data_dir)?;
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let r = crate::tokens::keys::rotate(&cfg.tokens, &cfg.server.data_dir, now, activate_in)?;
    tracing::info!(target: "audit", event = "keys_rotate", kid = %r.kid);
    // The provider's keys (CONTRACT 8.2) rotate with them while in use.
    let provider = crate::tokens::provider_keys::rotate(&cfg, now, activate_in)?;
    if let Some(p) = &provider {
        tracing::info!(target: "audit", event = "keys_rotate", kid = %p.kid, set = "oidc_provider");
    }
    let gateway = match cfg.server.admin_listen {
        None => "no admin listener: reload the gateway (SIGHUP) to use the new key".to_string(),
        Some(addr) => match admin_call(&cfg, "POST", "/admin/reload", b"") {
            Ok((true, _)) => "reloaded".to_string(),
            Ok((false, body)) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                return Err(format!(
                    "the new key {} is in '{}', but the running gateway refused the reload \
                     (so it does not use it yet): {}; fix the config and run `portcullis reload`",
                    r.kid,
                    crate::tokens::keys::key_file_path(&cfg.tokens, &cfg.server.data_dir).display(),
                    v["message"].as_str().unwrap_or("reload failed")
                ));
            }
            Err(_) => format!("no gateway answers on {addr}: it uses the new key when it starts"),
        },
    };
    let rfc = crate::clock::rfc3339;
    let mut out = serde_json::json!({
        "kid": r.kid,
        "signs_from": rfc(r.signs_from),
        "previous": r.previous.iter().map(|(kid, until)| serde_json::json!({
            "kid": kid, "verifies_until": rfc(*until)
        })).collect::<Vec<_>>(),
        "dropped": r.dropped,
        "key_file": crate::tokens::keys::key_file_path(&cfg.tokens, &cfg.server.data_dir).display().to_string(),
        "gateway": gateway,
    });
    if let Some(p) = provider {
        out["oidc_provider"] = serde_json::json!({
            "kid": p.kid,
            "signs_from": rfc(p.signs_from),
            "previous": p.previous.iter().map(|(kid, until)| serde_json::json!({
                "kid": kid, "verifies_until": rfc(*until)
            })).collect::<Vec<_>>(),
            "dropped": p.dropped,
            "key_file": crate::tokens::provider_keys::key_file_path(
                cfg.oidc_provider.signing_alg, &cfg.server.data_dir
            ).display().to_string(),
        });
    }
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    Ok(())
}
