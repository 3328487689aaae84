//! Bulk copies between stores (`portcullis storage migrate`): every record
//! of every kind, page by page, then the counts compared. Each page is one
//! atomic [`Store::import`] that replaces records with the same key, so a
//! copy cut short is simply run again.

use super::{RecordKind, Store, StoreError};

/// Records per page (one import transaction each).
pub const PAGE: usize = 500;

/// One kind's records on each side after a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub kind: RecordKind,
    pub copied: u64,
    pub source: u64,
    pub target: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("reading the source ({kind}): {cause}")]
    Source {
        kind: &'static str,
        cause: StoreError,
    },
    #[error("writing the target ({kind}): {cause}")]
    Target {
        kind: &'static str,
        cause: StoreError,
    },
}

/// Copy everything from `from` to `to`; `progress` hears of every page.
/// The tallies say what each side holds afterwards: equal counts are the
/// check that nothing was lost (a target that held other records of its
/// own counts more).
pub async fn copy_all(
    from: &dyn Store,
    to: &dyn Store,
    mut progress: impl FnMut(RecordKind, u64),
) -> Result<Vec<Tally>, CopyError> {
    let mut out = Vec::new();
    for kind in RecordKind::ALL {
        let src = |cause| CopyError::Source {
            kind: kind.name(),
            cause,
        };
        let dst = |cause| CopyError::Target {
            kind: kind.name(),
            cause,
        };
        let mut cursor = None;
        let mut copied = 0u64;
        loop {
            let page = from.export(kind, cursor, PAGE).await.map_err(src)?;
            copied += page.records.len() as u64;
            if !page.records.is_empty() {
                to.import(page.records).await.map_err(dst)?;
                progress(kind, copied);
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        out.push(Tally {
            kind,
            copied,
            source: from.count(kind).await.map_err(src)?,
            target: to.count(kind).await.map_err(dst)?,
        });
    }
    Ok(out)
}
