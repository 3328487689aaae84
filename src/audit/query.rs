//! Reading the stored chain: `GET /admin/audit`, `portcullis audit verify`
//! and `portcullis audit export` share these.

use std::sync::Arc;

use serde_json::{json, Value};

use super::chain::{Break, Checkpoint, Head, Verifier};
use crate::store::{AuditRecord, AuditState, Store, StoreError};

/// The most records one `GET /admin/audit` answers.
pub const MAX_LIMIT: usize = 1000;
/// Records read per page by `verify` and `export`.
pub const PAGE: usize = 1000;

/// What `GET /admin/audit` was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Records written at or after this time (unix seconds).
    pub since: Option<i64>,
    /// Records after this sequence number (for paging through the chain).
    pub after_seq: Option<u64>,
    pub limit: usize,
}

/// Parse `since=RFC3339&limit=N&after_seq=N`; a message for a 400.
pub fn parse_query(q: Option<&str>) -> Result<Query, String> {
    let mut out = Query {
        since: None,
        after_seq: None,
        limit: 100,
    };
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_encoding::percent_decode_str(v)
            .decode_utf8()
            .map_err(|_| format!("'{k}' is not UTF-8"))?;
        match k {
            "since" => out.since = Some(parse_time(&v)?),
            "limit" => {
                out.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| format!("limit must be a number from 1 to {MAX_LIMIT}"))?
            }
            "after_seq" => {
                out.after_seq = Some(
                    v.parse::<u64>()
                        .map_err(|_| "after_seq must be a number".to_string())?,
                )
            }
            _ => return Err(format!("unknown parameter '{k}'")),
        }
    }
    if out.since.is_some() && out.after_seq.is_some() {
        return Err("give since or after_seq, not both".into());
    }
    Ok(out)
}

/// An RFC 3339 time as unix seconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| format!("'{s}' is not an RFC 3339 time (e.g. 2026-01-02T03:04:05Z)"))
}

/// The records a query names, with the chain's head and checkpoint.
pub async fn answer(store: &Arc<dyn Store>, q: &Query) -> Result<Value, StoreError> {
    let records = match (q.since, q.after_seq) {
        (Some(since), _) => store.audit_since(since, q.limit).await?,
        (None, after) => store.audit_page(after.unwrap_or(0), q.limit).await?,
    };
    let state = store.audit_state().await?;
    Ok(json!({
        "records": records,
        "head": state.head,
        "checkpoint": state.checkpoint,
    }))
}

/// Where `verify` and `export` read the chain: the store itself, or a
/// running gateway's `GET /admin/audit` (when it holds a sled database).
pub trait Source {
    fn page(&mut self, after: u64) -> Result<Vec<AuditRecord>, String>;
    fn state(&mut self) -> Result<AuditState, String>;
}

/// Check the whole chain: from its checkpoint (which must be signed by
/// `key`) or from the start, to the head. The head as verified, or the
/// first record that does not fit.
pub fn verify(src: &mut dyn Source, key: &[u8]) -> Result<Result<(Head, u64), Break>, String> {
    let state = src.state()?;
    if let Some(c) = &state.checkpoint {
        if !c.is_signed_by(key) {
            return Ok(Err(Break {
                seq: c.seq,
                reason: "the checkpoint's signature does not verify (forged, or another key)"
                    .into(),
            }));
        }
    }
    let start = state.checkpoint.as_ref().map_or(0, |c: &Checkpoint| c.seq);
    let mut v = Verifier::new(state.checkpoint.as_ref());
    let mut after = start;
    // The head is read before the pages: records appended meanwhile lie
    // past it; the chain must reach it, and hold it at its place.
    let mut at_head = None;
    loop {
        let page = src.page(after)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in &page {
            if let Err(b) = v.check(r) {
                return Ok(Err(b));
            }
            if r.seq == state.head.seq {
                at_head = Some(r.hash.clone());
            }
        }
    }
    if state.head.seq > start {
        match at_head {
            Some(h) if h == state.head.hash => {}
            Some(_) => {
                return Ok(Err(Break {
                    seq: state.head.seq,
                    reason: "the record is not the one the head names".into(),
                }))
            }
            None => {
                return Ok(Err(Break {
                    seq: after + 1,
                    reason: format!(
                        "the chain ends at record {after} but the head names record {} (removed?)",
                        state.head.seq
                    ),
                }))
            }
        }
    }
    Ok(v.finish(None).map(|h| (h, v.checked)))
}

/// A store as a [`Source`].
pub struct StoreSource(pub Arc<dyn Store>);

impl Source for StoreSource {
    fn page(&mut self, after: u64) -> Result<Vec<AuditRecord>, String> {
        let s = self.0.clone();
        crate::store::block_on(async move { s.audit_page(after, PAGE).await })?
            .map_err(|e| e.to_string())
    }

    fn state(&mut self) -> Result<AuditState, String> {
        let s = self.0.clone();
        crate::store::block_on(async move { s.audit_state().await })?.map_err(|e| e.to_string())
    }
}

/// The parts of a `GET /admin/audit` answer.
pub fn from_answer(v: &Value) -> Result<(Vec<AuditRecord>, AuditState), String> {
    let bad = |e: serde_json::Error| format!("the gateway's answer: {e}");
    let records: Vec<AuditRecord> = serde_json::from_value(v["records"].clone()).map_err(bad)?;
    let head: Head = serde_json::from_value(v["head"].clone()).map_err(bad)?;
    let checkpoint: Option<Checkpoint> =
        serde_json::from_value(v["checkpoint"].clone()).map_err(bad)?;
    Ok((records, AuditState { head, checkpoint }))
}
