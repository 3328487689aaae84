//! Walks over whole trees: the sweep's resumable cursor and export pages.

use super::*;

/// Where the sweep of each tree resumes (`sweep:<tree>`, the last key it
/// looked at): a hint, written without a flush.
pub(super) const SWEEP_CURSOR: &str = "sweep:";

/// Judges a stored record (key, value) for the sweep.
pub(super) type IsDead<'a> = &'a dyn Fn(&[u8], &[u8]) -> StoreResult<bool>;

/// Up to `budget` records of `tree`, starting after the key the previous
/// sweep of that tree stopped at and wrapping around at the end, judged by
/// `is_dead`; returns the keys of the dead ones and remembers where it
/// stopped. Every record is looked at within `len / budget + 1` sweeps,
/// however the tree grows (a restart resumes at the remembered key too).
/// Only finds candidates: the writer re-checks each before removing it.
pub(super) fn sweep_scan(
    t: &Trees,
    tree: T,
    budget: usize,
    is_dead: IsDead<'_>,
) -> StoreResult<Vec<Vec<u8>>> {
    use std::ops::Bound;
    let name = TREES
        .iter()
        .find(|(x, _)| *x == tree)
        .map_or("", |(_, n)| n);
    let cursor_key = format!("{SWEEP_CURSOR}{name}").into_bytes();
    let cursor = t.meta.get(&cursor_key).map_err(backend)?;
    let records = t.tree(tree);
    let iter: Box<dyn Iterator<Item = ::sled::Result<(::sled::IVec, ::sled::IVec)>>> = match &cursor
    {
        None => Box::new(records.iter()),
        Some(c) => Box::new(
            records
                .range::<::sled::IVec, _>((Bound::Excluded(c.clone()), Bound::Unbounded))
                .chain(records.range::<::sled::IVec, _>(..=c.clone())),
        ),
    };
    let mut out = Vec::new();
    let mut last = None;
    for kv in iter.take(budget) {
        let (k, v) = kv.map_err(backend)?;
        if is_dead(&k, &v)? {
            out.push(k.to_vec());
        }
        last = Some(k);
    }
    match last {
        Some(k) => t.meta.insert(&cursor_key, k).map_err(backend)?,
        None => t.meta.remove(&cursor_key).map_err(backend)?,
    };
    Ok(out)
}

// ----------------------------------------------------------- bulk copies

/// The trees a kind of record lives in, in export order (the indexes,
/// `emails` and `user_sessions`, are rebuilt by an import).
pub(super) fn trees_of(kind: RecordKind) -> &'static [T] {
    match kind {
        RecordKind::Users => &[T::Users],
        RecordKind::Sessions => &[T::Sessions],
        RecordKind::Revocations => &[T::Revoked, T::Cutoffs],
        RecordKind::OneTimeTokens => &[T::OneTime],
        RecordKind::OneTimeSeqs => &[T::OneTimeSeq],
        RecordKind::Counters => &[T::Counters],
        RecordKind::Mail => &[T::Outbox],
        RecordKind::Identities => &[T::Identities],
        RecordKind::Audit => &[T::Audit, T::AuditCheckpoint],
    }
}

pub(super) fn record_from(t: T, k: &[u8], v: &[u8]) -> StoreResult<Record> {
    let text = |b: &[u8]| {
        String::from_utf8(b.to_vec()).map_err(|_| StoreError::Corrupt("a key is not text".into()))
    };
    Ok(match t {
        T::Users => Record::User(dec(v)?),
        T::Sessions => Record::Session(dec(v)?),
        T::Revoked => Record::Revocation(parse_revoked(k, v)?),
        T::Cutoffs => Record::Revocation(Revocation::Cutoff(
            decode_uuid(k)?,
            decode_i64(v, "cutoff")?,
        )),
        T::OneTime => Record::OneTimeToken {
            hash: text(k)?,
            token: dec(v)?,
        },
        T::OneTimeSeq => {
            let kind = match k.get(16) {
                Some(0) => OneTimeKind::EmailVerify,
                Some(1) => OneTimeKind::PasswordReset,
                Some(2) => OneTimeKind::MfaLogin,
                Some(3) => OneTimeKind::AuthCode,
                Some(4) => OneTimeKind::Consent,
                _ => return Err(StoreError::Corrupt("one-time sequence key".into())),
            };
            Record::OneTimeSeq {
                user_id: decode_uuid(&k[..16])?,
                kind,
                seq: decode_i64(v, "sequence")? as u64,
            }
        }
        T::Counters => Record::Counter {
            key: text(k)?,
            counter: dec(v)?,
        },
        T::Outbox => Record::Mail(dec(v)?),
        T::Identities => Record::Identity(dec(v)?),
        T::Audit => Record::Audit(dec(v)?),
        T::AuditCheckpoint => Record::AuditCheckpoint(dec(v)?),
        T::Emails
        | T::UserSessions
        | T::RevLog
        | T::LogState
        | T::KeyHolders
        | T::UserIdentities
        | T::AuditByUser
        | T::AuditByTime
        | T::AuditHead => return Err(StoreError::Corrupt("an index holds no records".into())),
    })
}

/// A page of `kind`. The cursor is the tree's place in [`trees_of`], a
/// colon, and the last key exported, in hex.
pub(super) fn export_page(
    t: &Trees,
    kind: RecordKind,
    cursor: Option<&str>,
    limit: usize,
) -> StoreResult<Page> {
    let bad = || StoreError::Corrupt("export cursor".into());
    let segments = trees_of(kind);
    let (mut seg, mut after) = match cursor {
        None => (0, None),
        Some(c) => {
            let (i, key) = c.split_once(':').ok_or_else(bad)?;
            (
                i.parse::<usize>().map_err(|_| bad())?,
                Some(
                    data_encoding::HEXLOWER_PERMISSIVE
                        .decode(key.as_bytes())
                        .map_err(|_| bad())?,
                ),
            )
        }
    };
    let limit = limit.max(1);
    let mut records = Vec::new();
    let mut last = None;
    while seg < segments.len() && records.len() < limit {
        let tree = t.tree(segments[seg]);
        let iter = match after.take() {
            Some(k) => {
                tree.range::<Vec<u8>, _>((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded))
            }
            None => tree.iter(),
        };
        for kv in iter.take(limit - records.len()) {
            let (k, v) = kv.map_err(backend)?;
            records.push(record_from(segments[seg], &k, &v)?);
            last = Some((seg, k));
        }
        if records.len() < limit {
            seg += 1;
        }
    }
    let next = match last {
        Some((i, k)) if records.len() == limit => {
            Some(format!("{i}:{}", data_encoding::HEXLOWER.encode(&k)))
        }
        _ => None,
    };
    Ok(Page { records, next })
}
