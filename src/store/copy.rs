//! Bulk copies between stores (`portcullis storage migrate`): every record
//! of every kind, page by page, then the counts compared. Each page is one
//! atomic [`Store::import`] that replaces records with the same key, so a
//! copy cut short is simply run again.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use super::{Record, RecordKind, Store, StoreError};

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

impl Record {
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::User(_) => RecordKind::Users,
            Record::Session(_) => RecordKind::Sessions,
            Record::Revocation(_) => RecordKind::Revocations,
            Record::OneTimeToken { .. } => RecordKind::OneTimeTokens,
            Record::OneTimeSeq { .. } => RecordKind::OneTimeSeqs,
            Record::Counter { .. } => RecordKind::Counters,
            Record::Mail(_) => RecordKind::Mail,
            Record::Identity(_) => RecordKind::Identities,
            Record::Audit(_) | Record::AuditCheckpoint(_) => RecordKind::Audit,
        }
    }
}

/// The format of a backup file: this header as the first line, then one
/// [`Record`] per line (JSON Lines).
pub const BACKUP_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupHeader {
    pub portcullis_backup: u32,
    /// When it was taken (unix seconds, the gateway's clock).
    pub created_at: i64,
    /// Records per kind ([`RecordKind::name`]): a restore checks them.
    pub counts: BTreeMap<String, u64>,
}

fn counts(records: &[Record]) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = RecordKind::ALL
        .iter()
        .map(|k| (k.name().to_string(), 0))
        .collect();
    for r in records {
        *out.entry(r.kind().name().to_string()).or_default() += 1;
    }
    out
}

/// Write `records` as a backup file.
pub fn write_backup(
    records: &[Record],
    created_at: i64,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let header = BackupHeader {
        portcullis_backup: BACKUP_FORMAT,
        created_at,
        counts: counts(records),
    };
    serde_json::to_writer(&mut *out, &header)?;
    out.write_all(b"\n")?;
    for r in records {
        serde_json::to_writer(&mut *out, r)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Where [`Store::export_all`] hands each page.
#[async_trait::async_trait]
pub trait PageSink: Send {
    async fn page(&mut self, kind: RecordKind, records: Vec<Record>) -> Result<(), String>;
}

/// Where a backup's bytes go, a page at a time: the CLI's file
/// ([`WriteSink`]) or the admin listener's streamed response body.
#[async_trait::async_trait]
pub trait BackupSink: Send {
    async fn write(&mut self, chunk: Vec<u8>) -> Result<(), String>;
}

/// A [`BackupSink`] over a blocking writer (a file).
pub struct WriteSink<'a, W>(pub &'a mut W);

#[async_trait::async_trait]
impl<W: Write + Send> BackupSink for WriteSink<'_, W> {
    async fn write(&mut self, chunk: Vec<u8>) -> Result<(), String> {
        self.0
            .write_all(&chunk)
            .map_err(|e| format!("writing the backup: {e}"))
    }
}

/// The record lines of every backup: each page from
/// [`Store::export_all`] as one line per record, handed to the sink whole;
/// counts what it wrote.
struct Lines<'a, P> {
    out: &'a mut dyn BackupSink,
    written: BTreeMap<String, u64>,
    done: u64,
    progress: P,
}

#[async_trait::async_trait]
impl<P: FnMut(u64) + Send> PageSink for Lines<'_, P> {
    async fn page(&mut self, _kind: RecordKind, records: Vec<Record>) -> Result<(), String> {
        let mut buf = Vec::with_capacity(records.len() * 512);
        for r in &records {
            serde_json::to_writer(&mut buf, r).map_err(|e| format!("writing the backup: {e}"))?;
            buf.push(b'\n');
            *self.written.entry(r.kind().name().to_string()).or_default() += 1;
        }
        self.done += records.len() as u64;
        drop(records);
        if !buf.is_empty() {
            self.out.write(buf).await?;
        }
        (self.progress)(self.done);
        Ok(())
    }
}

/// Every record of `from` as backup lines into `out`; what was written,
/// per kind (every kind named).
async fn write_records(
    from: &dyn Store,
    out: &mut dyn BackupSink,
    progress: impl FnMut(u64) + Send,
) -> Result<BTreeMap<String, u64>, String> {
    let mut lines = Lines {
        out,
        written: counts(&[]),
        done: 0,
        progress,
    };
    from.export_all(PAGE * 4, &mut lines).await?;
    Ok(lines.written)
}

fn line(v: &impl Serialize) -> Result<Vec<u8>, String> {
    let mut buf = serde_json::to_vec(v).map_err(|e| format!("writing the backup: {e}"))?;
    buf.push(b'\n');
    Ok(buf)
}

/// Write a backup of a store that nothing else writes meanwhile (the CLI's
/// own, offline) page by page: the counts first (the header line), then
/// every record, so memory holds one page, not the copy. `progress` hears
/// the records written so far and the total. A store that changed under
/// it (its pages disagree with its counts) is an error.
pub async fn write_backup_paged(
    from: &dyn Store,
    created_at: i64,
    out: &mut (impl Write + Send),
    mut progress: impl FnMut(u64, u64) + Send,
) -> Result<BackupHeader, String> {
    let mut held = BTreeMap::new();
    for kind in RecordKind::ALL {
        let n = from
            .count(kind)
            .await
            .map_err(|e| format!("reading the store: {e}"))?;
        held.insert(kind.name().to_string(), n);
    }
    let total = held.values().sum();
    let header = BackupHeader {
        portcullis_backup: BACKUP_FORMAT,
        created_at,
        counts: held,
    };
    let mut sink = WriteSink(out);
    sink.write(line(&header)?).await?;
    let written = write_records(from, &mut sink, |n| progress(n, total)).await?;
    for (kind, n) in &written {
        if Some(n) != header.counts.get(kind) {
            return Err(format!(
                "the store changed during the backup ({kind}: counted {:?}, read {n})",
                header.counts.get(kind)
            ));
        }
    }
    sink.0
        .flush()
        .map_err(|e| format!("writing the backup: {e}"))?;
    Ok(header)
}

/// The format of a backup streamed from a running gateway: the header
/// line names no counts (the store changes while it is read), the records
/// follow, and a last line ([`BackupEnd`]) counts what was written. A file
/// without that line is cut short.
pub const BACKUP_FORMAT_STREAMED: u32 = 2;

/// The last line of a streamed backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupEnd {
    /// Records per kind ([`RecordKind::name`]) in the file.
    pub portcullis_backup_end: BTreeMap<String, u64>,
}

/// Write a backup of a store that changes meanwhile (the admin listener's
/// `GET /admin/backup`), page by page into `out` as they are read (see
/// [`Store::export_all`] for what moment each page is of): the header, the
/// records, then the counts of what was written as the last line. Returns
/// the header with those counts.
pub async fn write_backup_streamed(
    from: &dyn Store,
    created_at: i64,
    out: &mut dyn BackupSink,
) -> Result<BackupHeader, String> {
    let mut header = BackupHeader {
        portcullis_backup: BACKUP_FORMAT_STREAMED,
        created_at,
        counts: BTreeMap::new(),
    };
    out.write(line(&header)?).await?;
    let written = write_records(from, out, |_| {}).await?;
    let end = BackupEnd {
        portcullis_backup_end: written,
    };
    out.write(line(&end)?).await?;
    header.counts = end.portcullis_backup_end;
    Ok(header)
}

/// Read a backup file whole, checking its format and that it holds what
/// its header counts (a truncated file is refused).
pub fn read_backup(input: impl BufRead) -> Result<(BackupHeader, Vec<Record>), String> {
    let mut records = Vec::new();
    let header = read_backup_with(input, |r| records.push(r))?;
    Ok((header, records))
}

/// [`read_backup`] without keeping the records: each goes to `each` as it
/// is read (a restore reads the file twice: checked whole first, then
/// imported page by page, so memory does not grow with the backup).
pub fn read_backup_with(
    input: impl BufRead,
    mut each: impl FnMut(Record),
) -> Result<BackupHeader, String> {
    let mut lines = input.lines();
    let first = lines
        .next()
        .ok_or("the file is empty")?
        .map_err(|e| format!("reading: {e}"))?;
    let header: BackupHeader =
        serde_json::from_str(&first).map_err(|_| "not a Portcullis backup (bad header line)")?;
    let streamed = match header.portcullis_backup {
        BACKUP_FORMAT => false,
        BACKUP_FORMAT_STREAMED => true,
        other => {
            return Err(format!(
                "backup format {other} is not one this version reads \
                 ({BACKUP_FORMAT}, {BACKUP_FORMAT_STREAMED})"
            ))
        }
    };
    let mut header = header;
    let mut end: Option<BackupEnd> = None;
    let mut found = counts(&[]);
    for (i, line) in lines.enumerate() {
        let line = line.map_err(|e| format!("reading: {e}"))?;
        if line.is_empty() {
            continue;
        }
        if end.is_some() {
            return Err(format!("line {}: after the end line: edited", i + 2));
        }
        let r: Record = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => match serde_json::from_str::<BackupEnd>(&line) {
                Ok(last) if streamed => {
                    end = Some(last);
                    continue;
                }
                _ => return Err(format!("line {}: {e}", i + 2)),
            },
        };
        *found.entry(r.kind().name().to_string()).or_default() += 1;
        each(r);
    }
    if streamed {
        match end {
            Some(end) => header.counts = end.portcullis_backup_end,
            None => {
                return Err(
                    "the file has no end line (the counts of a streamed backup): truncated"
                        .to_string(),
                )
            }
        }
    }
    // A kind the header does not name (a backup from before it existed)
    // holds nothing.
    let named = |m: &BTreeMap<String, u64>| -> BTreeMap<String, u64> {
        m.iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (k.clone(), *n))
            .collect()
    };
    if named(&found) != named(&header.counts) {
        return Err(format!(
            "the file holds {found:?} but its header says {:?}: truncated or edited",
            header.counts
        ));
    }
    Ok(header)
}

/// The records of a backup file already checked whole by
/// [`read_backup_with`], one at a time: the header and a streamed backup's
/// end line are not records.
pub fn backup_records(input: impl BufRead) -> impl Iterator<Item = Result<Record, String>> {
    input
        .lines()
        .skip(1)
        .filter(|l| !matches!(l, Ok(l) if l.is_empty()))
        .filter(|l| !matches!(l, Ok(l) if l.starts_with("{\"portcullis_backup_end\"")))
        .map(|l| {
            l.map_err(|e| e.to_string())
                .and_then(|l| serde_json::from_str(&l).map_err(|e| e.to_string()))
        })
}

/// Put a backup's records into an empty store, page by page; the tallies
/// compare what the backup held with what the store holds after.
pub async fn restore(records: Vec<Record>, to: &dyn Store) -> Result<Vec<Tally>, CopyError> {
    let held = counts(&records);
    restore_pages(records.into_iter().map(Ok), held, to, |_| {})
        .await
        .map_err(|e| match e {
            RestoreError::Copy(e) => e,
            RestoreError::Read(e) => CopyError::Source {
                kind: "backup",
                cause: StoreError::Corrupt(e),
            },
        })
}

/// Why a streamed restore stopped.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}")]
    Copy(#[from] CopyError),
    #[error("reading the backup: {0}")]
    Read(String),
}

/// Put records read one at a time into a store, [`PAGE`] per import;
/// `held` is what the backup's header counts; `progress` hears the number
/// of records imported after each page.
pub async fn restore_pages(
    records: impl Iterator<Item = Result<Record, String>>,
    held: BTreeMap<String, u64>,
    to: &dyn Store,
    mut progress: impl FnMut(u64),
) -> Result<Vec<Tally>, RestoreError> {
    let mut copied: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut page = Vec::with_capacity(PAGE);
    let mut done = 0u64;
    let mut records = records.peekable();
    while records.peek().is_some() {
        for r in records.by_ref().take(PAGE) {
            page.push(r.map_err(RestoreError::Read)?);
        }
        for r in &page {
            *copied.entry(r.kind().name()).or_default() += 1;
        }
        done += page.len() as u64;
        let kind = page[0].kind().name();
        to.import(std::mem::take(&mut page))
            .await
            .map_err(|cause| CopyError::Target { kind, cause })?;
        progress(done);
    }
    let mut out = Vec::new();
    for kind in RecordKind::ALL {
        out.push(Tally {
            kind,
            copied: copied.get(kind.name()).copied().unwrap_or(0),
            source: held.get(kind.name()).copied().unwrap_or(0),
            target: to.count(kind).await.map_err(|cause| CopyError::Target {
                kind: kind.name(),
                cause,
            })?,
        });
    }
    Ok(out)
}
