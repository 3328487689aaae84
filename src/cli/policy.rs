//! `policy explain`.

use std::sync::Arc;

use super::admin_call::admin_call;
use super::PolicyCommand;
use crate::config::Config;

/// Why `policy explain` stopped: bad arguments (exit 2) or a failure.
pub enum ExplainError {
    BadArguments(String),
    Failed(String),
}

/// `portcullis policy explain`: prints `{route, decision, rule}` as JSON;
/// `Ok(true)` when the decision is allow. With `--email`, the user is read
/// from the store, or, when a running gateway holds it, the question goes
/// to that gateway's `POST /admin/explain` (and so to its running config).
pub fn policy_command(cfg: Config, cmd: PolicyCommand) -> Result<bool, ExplainError> {
    let PolicyCommand::Explain {
        method,
        url,
        email,
        api_key_scopes,
        ip,
        at,
    } = cmd;
    let q = crate::proxy::explain::Question {
        method,
        url,
        email,
        api_key_scopes,
        ip,
        at,
    };
    let bad = |e: crate::proxy::explain::BadQuestion| ExplainError::BadArguments(e.0);
    q.parse().map_err(bad)?;
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let answer = if q.email.is_none() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| ExplainError::Failed(e.to_string()))?;
        rt.block_on(crate::proxy::explain::explain(&cfg, None, &q, now))
            .map_err(bad)?
    } else {
        match crate::server::open_store(&Arc::new(cfg.clone())) {
            Ok(store) => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| ExplainError::Failed(e.to_string()))?;
                rt.block_on(crate::proxy::explain::explain(
                    &cfg,
                    Some(store.as_ref()),
                    &q,
                    now,
                ))
                .map_err(bad)?
            }
            Err(e) if e.contains("in use") => {
                let body =
                    serde_json::to_vec(&q).map_err(|e| ExplainError::Failed(e.to_string()))?;
                let (ok, body) = admin_call(&cfg, "POST", "/admin/explain", &body)
                    .map_err(ExplainError::Failed)?;
                let v: serde_json::Value =
                    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                if !ok {
                    let m = v["message"]
                        .as_str()
                        .unwrap_or("explain failed")
                        .to_string();
                    return Err(ExplainError::BadArguments(m));
                }
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(v["decision"] == "allow");
            }
            Err(e) => return Err(ExplainError::Failed(e)),
        }
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&answer).unwrap_or_default()
    );
    Ok(answer.allowed())
}
