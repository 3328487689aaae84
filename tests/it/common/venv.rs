//! The pinned Python tools the tests drive (authlib, PyJWT,
//! standardwebhooks, schemathesis, Selenium), each in its own venv under
//! the target dir, installed on first use.
//!
//! Tests run in parallel threads and, with several test binaries or
//! suites, in parallel processes: the install is done under a machine-wide
//! lock named after the venv, and a venv counts as installed only once its
//! `ready` marker holds exactly the pinned package list. A half-made venv
//! (an install that was interrupted, or pins that changed) is removed and
//! made again, never used.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::bin;

/// The venv `name` with exactly `packages` (pinned `pkg==version`
/// strings) installed; returns the venv's directory. Waits while another
/// test thread or process installs it.
pub fn venv(name: &str, packages: &[&str]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let ready = dir.join("ready");
    let want = packages.join("\n");
    let _guard = super::ports::machine_lock(&format!("venv-{name}"));
    if std::fs::read(&ready).ok().as_deref() == Some(want.as_bytes()) {
        return dir;
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "venv"]).arg(&dir);
    let out = bin::run(cmd, None, Duration::from_secs(120));
    assert!(
        out.ok(),
        "python3 -m venv failed (run .ci/deps --test): {out:?}"
    );
    let mut cmd = Command::new(dir.join("bin/pip"));
    cmd.args(["install", "-q"]).args(packages);
    let out = bin::run(cmd, None, Duration::from_secs(600));
    assert!(out.ok(), "pip install {packages:?} failed: {out:?}");
    std::fs::write(&ready, want.as_bytes()).unwrap();
    dir
}

/// The venv's Python interpreter (see [`venv`]).
pub fn python(name: &str, packages: &[&str]) -> PathBuf {
    venv(name, packages).join("bin/python")
}
