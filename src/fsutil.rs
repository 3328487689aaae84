//! Whole-file writes that a crash cannot leave half done: the secret files
//! (signing keys, refresh and MFA keys, the admin token, the data dir's
//! stamp, a generated TLS key) and backups. A reader sees the old file or
//! the new one, never a part of one, and an acknowledged write survives a
//! power cut. A leaf module: it knows nothing of the gateway.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// What [`write_atomic`] does when `path` already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Replace it (an atomic rename over it).
    Replace,
    /// Leave it alone and fail with [`io::ErrorKind::AlreadyExists`]; of two
    /// writers at once exactly one succeeds.
    Refuse,
}

/// Write `data` to `path` whole, with permission bits `mode` (0o600 for a
/// secret): into a new temporary file beside it, fsync, then rename it over
/// `path` ([`Existing::Replace`]) or hard-link it to `path`, which never
/// clobbers ([`Existing::Refuse`]), and fsync the directory. The directory
/// must exist.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32, existing: Existing) -> io::Result<()> {
    let tmp = temp_path(path)?;
    let placed = write_new(&tmp, data, mode).and_then(|()| match existing {
        Existing::Replace => std::fs::rename(&tmp, path),
        Existing::Refuse => std::fs::hard_link(&tmp, path),
    });
    if existing == Existing::Refuse || placed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    placed?;
    sync_dir(path)
}

/// `.NAME.PID.N.tmp` in `path`'s directory: unique within the process and
/// among processes, so two writers never share (or rename away) a temp file.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}.{n}.tmp", std::process::id()));
    Ok(path.with_file_name(tmp))
}

/// Create `path` (never an existing file or link), write `data`, fsync.
fn write_new(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Make the directory entry itself durable (the rename or link).
pub fn sync_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = (path, File::open);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[cfg(unix)]
    fn mode_of(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn replace_writes_and_overwrites_leaving_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        write_atomic(&p, b"one", 0o600, Existing::Replace).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        write_atomic(&p, b"two", 0o600, Existing::Replace).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(names(dir.path()), vec!["secret".to_string()]);
        #[cfg(unix)]
        assert_eq!(mode_of(&p), 0o600);
    }

    #[test]
    fn refuse_never_overwrites_and_says_already_exists() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("backup");
        write_atomic(&p, b"first", 0o600, Existing::Refuse).unwrap();
        let e = write_atomic(&p, b"second", 0o600, Existing::Refuse).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        assert_eq!(names(dir.path()), vec!["backup".to_string()]);
        #[cfg(unix)]
        assert_eq!(mode_of(&p), 0o600);
    }

    #[test]
    fn of_many_refusing_writers_at_once_exactly_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        let barrier = std::sync::Barrier::new(8);
        let wins: Vec<bool> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8u8)
                .map(|i| {
                    let (p, barrier) = (&p, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        write_atomic(p, &[i; 64], 0o600, Existing::Refuse).is_ok()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(wins.iter().filter(|w| **w).count(), 1);
        let winner = wins.iter().position(|w| *w).unwrap() as u8;
        assert_eq!(std::fs::read(&p).unwrap(), vec![winner; 64]);
        assert_eq!(names(dir.path()), vec!["key".to_string()]);
    }

    #[cfg(unix)]
    #[test]
    fn the_mode_is_the_one_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cert.pem");
        write_atomic(&p, b"pem", 0o644, Existing::Refuse).unwrap();
        // No more than asked for, and at least the owner's read and write
        // (the umask may take group and other bits away).
        assert_eq!(mode_of(&p) & !0o644, 0);
        assert_eq!(mode_of(&p) & 0o600, 0o600);
    }

    #[test]
    fn a_missing_directory_is_an_error_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope").join("f");
        let e = write_atomic(&p, b"x", 0o600, Existing::Replace).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(names(dir.path()).is_empty());
    }
}
