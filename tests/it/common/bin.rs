//! Running the real `portcullis` binary: one-shot CLI commands and a served
//! gateway as a child process. Every wait is bounded, so a binary that hangs
//! fails the test instead of the whole suite; a served child is killed (by
//! its own handle) when the test drops it.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, http};

/// The binary under test (`target/release/portcullis` under `--release`).
pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// How long a one-shot command may run.
pub const CLI_LIMIT: Duration = Duration::from_secs(30);

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
}

/// A command line for the binary, with no `PORTCULLIS_*` or `RUST_LOG`
/// inherited from the test's environment.
pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("PORTCULLIS_CONFIG")
        .env_remove("PORTCULLIS_JWT_SECRET")
        .env_remove("PORTCULLIS_REFRESH_SECRET")
        .env_remove("PORTCULLIS_DATABASE_URL")
        .env_remove("PORTCULLIS_SMTP_USERNAME")
        .env_remove("PORTCULLIS_SMTP_PASSWORD")
        .env_remove("RUST_LOG");
    cmd
}

/// Run `cmd` (the binary from [`command`], or any other tool) to completion
/// with `stdin` on its standard input (closed after), bounded by `limit`:
/// past it the child is killed and the test fails with what it printed.
pub fn run(mut cmd: Command, stdin: Option<&str>, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {:?}: {e}", cmd.get_program()));
    // Readers on their own threads, so a full pipe never blocks the child.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            // The child may exit without reading it.
            let _ = input.write_all(text.as_bytes());
        }
    }
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{:?} {:?} did not exit within {limit:?}; stderr: {}",
                cmd.get_program(),
                cmd.get_args().collect::<Vec<_>>(),
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// [`run`] off the async runtime.
pub async fn run_async(cmd: Command, stdin: Option<String>, limit: Duration) -> Output {
    tokio::task::spawn_blocking(move || run(cmd, stdin.as_deref(), limit))
        .await
        .unwrap()
}

/// A minimal gateway config on fresh loopback ports: plain HTTP and the
/// admin listener (no TLS listener), `dir/data` as the data dir, the given
/// `[[routes]]` upstream for everything under `/`, and `extra` appended.
pub struct BinConfig {
    pub path: PathBuf,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub data_dir: PathBuf,
}

pub fn write_config(dir: &Path, upstream: &str, extra: &str) -> BinConfig {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let data_dir = dir.join("data");
    let text = format!(
        r#"
[server]
listen = "{listen}"
tls_listen = ""
admin_listen = "{admin}"
data_dir = "{data}"
grace_period_secs = 5

{extra}

[[routes]]
prefix = "/"
upstream = "{upstream}"
auth = "required"
"#,
        data = data_dir.display(),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    BinConfig {
        path,
        listen,
        admin,
        data_dir,
    }
}

/// A gateway running as a child process. Dropping it kills the child.
pub struct Served {
    pub child: Child,
    pub stderr_path: PathBuf,
    pub admin: SocketAddr,
}

/// How long the binary may take to be ready (`/readyz` 200) after it
/// starts.
pub const START_LIMIT: Duration = Duration::from_secs(30);

impl Served {
    /// `portcullis serve --config <cfg.path>`, returned once its admin
    /// listener answers `/readyz` with 200 (every listener accepts).
    /// stderr goes to `stderr_path` (read it with [`Served::stderr`]).
    pub async fn start(cfg: &BinConfig) -> Served {
        let mut cmd = command(&["serve", "--config"]);
        cmd.arg(&cfg.path);
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let stderr_path = cfg.path.with_extension(format!("stderr.{n}"));
        Self::spawn(cmd, stderr_path, cfg.admin).await
    }

    /// Take charge of `child`, a gateway the test spawned (and waits for)
    /// itself, writing its log to `stderr_path`, with its admin listener on
    /// `admin`: from now on it is killed when the returned value is dropped.
    pub fn adopt(child: Child, stderr_path: PathBuf, admin: SocketAddr) -> Served {
        Served {
            child,
            stderr_path,
            admin,
        }
    }

    /// Spawn `cmd` (a `serve` command line) and wait until `admin` answers
    /// `/readyz` with 200, bounded by [`START_LIMIT`]: `/healthz` only says
    /// the admin listener runs, not that the public ones accept (issue 27).
    pub async fn spawn(mut cmd: Command, stderr_path: PathBuf, admin: SocketAddr) -> Served {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("start the portcullis binary");
        let mut served = Served::adopt(child, stderr_path, admin);
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let answer = http::request(admin, "GET", "/readyz", &[], None).await;
            if answer.as_ref().is_ok_and(|r| r.status == 200) {
                return served;
            }
            if let Some(st) = served.child.try_wait().unwrap() {
                panic!("the binary exited with {st}: {}", served.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "the binary was not ready within {START_LIMIT:?} ({:?}): {}",
                answer.map(|r| r.text()),
                served.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGKILL: no shutdown code runs, nothing is flushed that was not
    /// already. Returns once the process is gone.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Send a signal by name (`TERM`, `INT`) to this child only, once the
    /// child handles them (before that, a parent that ignores a signal
    /// makes the child ignore it too).
    pub async fn signal(&self, sig: &str) {
        let deadline = Instant::now() + START_LIMIT;
        while !self.stderr().contains(portcullis::server::SIGNALS_HANDLED) {
            assert!(
                Instant::now() < deadline,
                "signals never handled: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig}");
    }

    /// The exit status, waiting at most `limit` (else the test fails).
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() >= deadline {
                let pid = self.child.id();
                let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
                    .map(|d| {
                        d.flatten()
                            .map(|t| {
                                let r = |f: &str| {
                                    std::fs::read_to_string(t.path().join(f)).unwrap_or_default()
                                };
                                format!("{} {}", r("comm").trim(), r("wchan"))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                panic!(
                    "no exit within {limit:?}; threads: {threads:?}\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.crash();
    }
}
