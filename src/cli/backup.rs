//! `backup`, `restore` and `storage migrate`.

use std::io::Write;
use std::sync::Arc;

use super::admin_call::admin_stream;
use super::progress::Progress;
use super::StorageCommand;
use crate::config::Config;

/// `portcullis backup --out PATH`. Offline (the database is not in use,
/// so nothing writes meanwhile) the records are written page by page
/// straight into the file; from a running gateway the copy streams from
/// its admin listener into the file as it comes (neither holds the copy in
/// memory), with progress on stderr either way. The file is written under
/// a temporary name and checked whole (read again, streaming) before it
/// takes its name: a copy cut short is never kept.
pub fn backup_command(cfg: Config, out: &std::path::Path) -> Result<(), String> {
    use crate::store::copy;
    use std::os::unix::fs::OpenOptionsExt;
    if out.exists() {
        return Err(format!("'{}' exists: choose a new file", out.display()));
    }
    let store = match crate::server::open_store(&cfg) {
        Ok(store) => Some(store),
        Err(e) if e.contains("in use") => None,
        Err(e) => return Err(e),
    };
    let tmp = out.with_extension("partial");
    let write = || {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| format!("creating '{}': {e}", tmp.display()))?;
        let failed = |e: std::io::Error| format!("writing '{}': {e}", tmp.display());
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut f);
        match store {
            Some(store) => {
                let now = crate::clock::Clock::now(&crate::clock::SystemClock);
                let mut progress = Progress::new("backing up", None);
                let done = crate::store::block_on(async {
                    copy::write_backup_paged(&*store, now, &mut w, |n, total| {
                        progress.total = Some(total);
                        progress.set(n)
                    })
                    .await
                })?;
                progress.finish();
                done?;
            }
            None => {
                let mut progress = Progress::new("backing up", None);
                let mut lines = CountLines {
                    out: &mut w,
                    lines: 0,
                    each: |n: u64| progress.set(n.saturating_sub(1)),
                };
                let streamed = admin_stream(&cfg, "/admin/backup", &mut lines);
                progress.finish();
                streamed?;
            }
        }
        w.flush().map_err(failed)?;
        drop(w);
        f.sync_all().map_err(failed)?;
        // Checked whole before it is kept: a cut connection is no backup.
        let file = std::fs::File::open(&tmp).map_err(|e| e.to_string())?;
        copy::read_backup_with(std::io::BufReader::with_capacity(1 << 20, file), |_| {})
    };
    let header = match write() {
        Ok(h) => h,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    // A hard link never clobbers: a file that appeared at `out` meanwhile
    // is refused, as at the start.
    let placed = std::fs::hard_link(&tmp, out);
    let _ = std::fs::remove_file(&tmp);
    placed.map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            format!("'{}' exists: choose a new file", out.display())
        }
        _ => format!("writing '{}': {e}", out.display()),
    })?;
    crate::fsutil::sync_dir(out).map_err(|e| format!("writing '{}': {e}", out.display()))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "out": out.display().to_string(),
            "created_at": header.created_at,
            "counts": header.counts,
        }))
        .unwrap_or_default()
    );
    Ok(())
}

/// A writer that counts the lines going through it (the records of a
/// backup streamed from the gateway, for the progress).
struct CountLines<'a, W, F> {
    out: &'a mut W,
    lines: u64,
    each: F,
}

impl<W: Write, F: FnMut(u64)> Write for CountLines<'_, W, F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        let seen = buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        if seen > 0 {
            self.lines += seen;
            (self.each)(self.lines);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// `portcullis restore --from PATH`: the file is checked whole first (a
/// truncated or edited one is refused before anything is written), then
/// read again and imported page by page, with progress on stderr; neither
/// pass keeps the records in memory.
pub fn restore_command(cfg: Config, from: &std::path::Path) -> Result<(), String> {
    use crate::store::{copy, RecordKind};
    let open = || {
        std::fs::File::open(from)
            .map(|f| std::io::BufReader::with_capacity(1 << 20, f))
            .map_err(|e| format!("opening '{}': {e}", from.display()))
    };
    let mut checking = Progress::new("checking the backup", None);
    let header = copy::read_backup_with(open()?, |_| checking.add(1))
        .map_err(|e| format!("'{}': {e}", from.display()))?;
    checking.finish();
    let store = crate::server::open_store_for_restore(&cfg).map_err(|e| {
        if e.contains("in use") {
            "the database is in use: stop the gateway first".to_string()
        } else {
            e
        }
    })?;
    let total: u64 = header.counts.values().sum();
    let records = copy::backup_records(open()?);
    let tallies = crate::store::block_on(async move {
        for kind in RecordKind::ALL {
            let n = store.count(kind).await.map_err(|e| e.to_string())?;
            if n > 0 {
                return Err(format!(
                    "the store is not empty ({n} {}): restore into an empty one",
                    kind.name()
                ));
            }
        }
        let mut progress = Progress::new("restoring", Some(total));
        let tallies = copy::restore_pages(records, header.counts, &*store, |n| progress.set(n))
            .await
            .map_err(|e| e.to_string());
        progress.finish();
        tallies
    })??;
    print_tallies(&tallies)
}

/// Print what each side holds; an error if any kind differs.
fn print_tallies(tallies: &[crate::store::copy::Tally]) -> Result<(), String> {
    let report: serde_json::Map<String, serde_json::Value> = tallies
        .iter()
        .map(|t| {
            (
                t.kind.name().to_string(),
                serde_json::json!({ "copied": t.copied, "source": t.source, "target": t.target }),
            )
        })
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    let short: Vec<String> = tallies
        .iter()
        .filter(|t| t.target != t.source)
        .map(|t| {
            format!(
                "{} (source {}, target {})",
                t.kind.name(),
                t.source,
                t.target
            )
        })
        .collect();
    if short.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the counts differ after the copy: {}; a target that held records of its own \
             counts more",
            short.join(", ")
        ))
    }
}

/// Open a store named on the command line: `sled:PATH` or a PostgreSQL URL.
/// A sled source must exist (opening would create an empty one).
fn open_location(
    spec: &str,
    must_exist: bool,
    ca_file: Option<&std::path::Path>,
) -> Result<Arc<dyn crate::store::Store>, String> {
    if let Some(path) = spec.strip_prefix("sled:") {
        let path = std::path::Path::new(path);
        if must_exist && !path.join("conf").exists() {
            return Err(format!("no sled database at '{}'", path.display()));
        }
        return crate::store::sled_store::SledStore::open(path)
            .map(|s| Arc::new(s) as Arc<dyn crate::store::Store>)
            .map_err(|e| {
                let s = e.to_string();
                if s.contains("WouldBlock") || s.contains("temporarily unavailable") {
                    format!(
                        "the database at '{}' is in use: stop the gateway first",
                        path.display()
                    )
                } else {
                    format!("opening '{}': {s}", path.display())
                }
            });
    }
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        let (url, ca) = (spec.to_string(), ca_file.map(std::path::Path::to_path_buf));
        return crate::store::block_on(async move {
            crate::store::pg_store::PgStore::connect_with(&url, ca.as_deref()).await
        })?
        .map(|s| Arc::new(s) as Arc<dyn crate::store::Store>)
        .map_err(|e| format!("opening the PostgreSQL store: {e}"));
    }
    // Not echoed: it may hold a password.
    Err("a store is named sled:PATH or postgres://…".into())
}

/// Run a `storage …` command; prints what each side holds as JSON.
pub fn storage_command(cmd: StorageCommand) -> Result<(), String> {
    let StorageCommand::Migrate { from, to, ca_file } = cmd;
    if from == to {
        return Err("--from and --to name the same store".into());
    }
    let source = open_location(&from, true, ca_file.as_deref())?;
    let target = open_location(&to, false, ca_file.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut progress = Progress::new("copying", None);
    let (mut before, mut last_kind) = (0u64, None);
    let tallies = rt
        .block_on(crate::store::copy::copy_all(
            &*source,
            &*target,
            |kind, n| {
                // `n` counts this kind's records; the bar counts them all.
                if last_kind != Some(kind) {
                    before = progress.done;
                    last_kind = Some(kind);
                }
                progress.set(before + n);
            },
        ))
        .map_err(|e| e.to_string());
    progress.finish();
    let tallies = tallies?;
    print_tallies(&tallies)
}
