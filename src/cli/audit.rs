//! `portcullis audit verify` and `portcullis audit export` (CONTRACT 8.5):
//! on the store directly, or through the running gateway's admin listener
//! when it holds a sled database.

use std::io::Write;
use std::sync::Arc;

use super::admin_call::admin_call;
use super::AuditCommand;
use crate::audit::query::{self, Source, StoreSource, PAGE};
use crate::config::Config;
use crate::store::{AuditRecord, AuditState, Store};

/// The running gateway's `GET /admin/audit`, as a [`Source`].
struct ListenerSource<'a>(&'a Config);

impl ListenerSource<'_> {
    fn get(&self, q: &str) -> Result<(Vec<AuditRecord>, AuditState), String> {
        let (ok, body) = admin_call(self.0, "GET", &format!("/admin/audit?{q}"), b"")?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("the gateway's answer: {e}"))?;
        if !ok {
            return Err(v["message"]
                .as_str()
                .unwrap_or("reading the audit trail failed")
                .to_string());
        }
        query::from_answer(&v)
    }
}

impl Source for ListenerSource<'_> {
    fn page(&mut self, after: u64) -> Result<Vec<AuditRecord>, String> {
        Ok(self.get(&format!("after_seq={after}&limit={PAGE}"))?.0)
    }

    fn state(&mut self) -> Result<AuditState, String> {
        Ok(self.get("after_seq=0&limit=1")?.1)
    }
}

fn open(cfg: &Config) -> Result<Option<Arc<dyn Store>>, String> {
    match crate::server::open_store(cfg) {
        Ok(store) => Ok(Some(store)),
        Err(e) if e.contains("in use") => Ok(None),
        Err(e) => Err(e),
    }
}

/// The key checkpoints are signed with (see `audit::chain`).
fn checkpoint_key(cfg: &Config) -> Result<Vec<u8>, String> {
    let keys = match &cfg.tokens.refresh_secret {
        Some(secret) => crate::tokens::refresh::RefreshKeys::from_secret(secret.0.as_bytes()),
        None => crate::tokens::refresh::RefreshKeys::load(&cfg.server.data_dir)?,
    };
    Ok(keys.audit_checkpoint_key())
}

pub fn audit_command(cfg: Config, cmd: AuditCommand) -> Result<(), String> {
    let store = open(&cfg)?;
    let mut direct;
    let mut remote;
    let src: &mut dyn Source = match store {
        Some(s) => {
            direct = StoreSource(s);
            &mut direct
        }
        None => {
            remote = ListenerSource(&cfg);
            &mut remote
        }
    };
    match cmd {
        AuditCommand::Verify => {
            let key = checkpoint_key(&cfg)?;
            match query::verify(src, &key)? {
                Ok((head, checked)) => {
                    println!(
                        "audit chain OK: {checked} records checked, head {} {}",
                        head.seq, head.hash
                    );
                    Ok(())
                }
                Err(b) => Err(format!("audit chain broken: {b}")),
            }
        }
        AuditCommand::Export { since, out } => {
            let since = since.as_deref().map(query::parse_time).transpose()?;
            let mut w: Box<dyn Write> = match &out {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p)
                        .map_err(|e| format!("creating '{}': {e}", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let start = src.state()?.checkpoint.map_or(0, |c| c.seq);
            let mut after = start;
            loop {
                let page = src.page(after)?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for r in page
                    .iter()
                    .filter(|r| since.is_none_or(|s| r.event.at >= s))
                {
                    let line = serde_json::to_string(r).map_err(|e| e.to_string())?;
                    writeln!(w, "{line}").map_err(|e| format!("writing: {e}"))?;
                }
            }
            w.flush().map_err(|e| format!("writing: {e}"))
        }
    }
}
