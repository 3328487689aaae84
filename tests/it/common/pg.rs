//! A throwaway PostgreSQL cluster for the tests: started once per test
//! process on an ephemeral port (as the `postgres` user when running as
//! root, since `initdb` refuses root), with `fsync=off`. A watcher shell
//! started with it stops the server and removes its directory as soon as
//! this test process is gone, however it ended; nothing else is touched.
//! Every test gets a database of its own.
//!
//! `Cluster::stop` stops it earlier (the benchmarks use it).
//!
//! Without PostgreSQL binaries (`/usr/lib/postgresql/*/bin`, or `PG_BIN`)
//! a PostgreSQL test fails and says how to install them ([`required`]): no
//! test passes by not running. `.ci/run` installs them.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Cluster {
    pub port: u16,
    dir: PathBuf,
    /// For a cluster that speaks TLS: its (self-signed) certificate, which
    /// clients must trust.
    pub ca_file: Option<PathBuf>,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
static TLS_CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// The cluster, started on first use; `Err` says why there is none.
pub fn cluster() -> Result<&'static Cluster, &'static str> {
    CLUSTER
        .get_or_init(|| start(false))
        .as_ref()
        .map_err(String::as_str)
}

/// The cluster, or the test fails saying why there is none and how to get
/// one (`bash .ci/deps --test` installs the server).
pub fn required() -> &'static Cluster {
    cluster().unwrap_or_else(|why| {
        panic!("PostgreSQL is needed here (run `bash .ci/deps --test`): {why}")
    })
}

/// A second cluster that also offers TLS (`ssl = on`) with a certificate
/// for `localhost` and `127.0.0.1`, self-signed: see [`Cluster::ca_file`].
pub fn tls_cluster() -> Result<&'static Cluster, &'static str> {
    TLS_CLUSTER
        .get_or_init(|| start(true))
        .as_ref()
        .map_err(String::as_str)
}

fn pg_bin() -> Result<PathBuf, String> {
    if let Ok(b) = std::env::var("PG_BIN") {
        return Ok(PathBuf::from(b));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| "no /usr/lib/postgresql (install Debian's postgresql package)".to_string())?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists() && b.join("postgres").exists())
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| "no PostgreSQL server binaries under /usr/lib/postgresql".into())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `cmd args…`, as the `postgres` user when we are root.
fn as_postgres(program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    }
}

fn start(tls: bool) -> Result<Cluster, String> {
    let bin = pg_bin()?;
    let dir = std::env::temp_dir().join(format!(
        "portcullis-pg-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    if is_root() {
        let owner = Command::new("chown")
            .args(["-R", "postgres:", &dir.display().to_string()])
            .status()
            .map_err(|e| format!("chown: {e}"))?;
        if !owner.success() {
            return Err("chown to the postgres user failed".into());
        }
    }
    let initdb = as_postgres(&bin.join("initdb").display().to_string())
        .args(["-D", &dir.join("data").display().to_string()])
        .args(["-A", "trust", "-U", "postgres", "--no-sync"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("running initdb: {e}"))?;
    if !initdb.status.success() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        ));
    }
    let ca_file = if tls { Some(enable_tls(&dir)?) } else { None };
    let port = super::free_port();
    // The server runs under a watcher that stops it (and removes the
    // directory) once this process is gone.
    let script = r#"
"$1/postgres" -D "$2/data" -p "$3" -k "$2" -c listen_addresses=127.0.0.1 \
  -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
  -c max_connections=400 >"$2/log" 2>&1 &
pg=$!
while [ -d "/proc/$4" ] && [ ! -e "$2/stop" ] && kill -0 "$pg" 2>/dev/null; do sleep 0.5; done
kill -INT "$pg" 2>/dev/null
wait "$pg"
rm -rf "$2"
"#;
    as_postgres("sh")
        .args(["-c", script, "pg-watch"])
        .arg(bin.display().to_string())
        .arg(dir.display().to_string())
        .arg(port.to_string())
        .arg(std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting postgres: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            return Err(format!("postgres did not start on {port}: {log}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Cluster { port, dir, ca_file })
}

/// Give the cluster in `dir` a certificate and turn TLS on; the path of
/// the certificate (to trust).
fn enable_tls(dir: &std::path::Path) -> Result<PathBuf, String> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .map_err(|e| format!("a test certificate: {e}"))?;
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    let trusted = dir.join("trusted.crt");
    for (path, pem) in [
        (&cert, ck.cert.pem()),
        (&key, ck.key_pair.serialize_pem()),
        (&trusted, ck.cert.pem()),
    ] {
        std::fs::write(path, pem).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", key.display()))?;
    if is_root() {
        let owner = Command::new("chown")
            .arg("postgres:")
            .arg(&cert)
            .arg(&key)
            .status()
            .map_err(|e| format!("chown: {e}"))?;
        if !owner.success() {
            return Err("chown of the test certificate failed".into());
        }
    }
    let conf = dir.join("data/postgresql.conf");
    let mut text =
        std::fs::read_to_string(&conf).map_err(|e| format!("{}: {e}", conf.display()))?;
    text.push_str(&format!(
        "\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
        cert.display(),
        key.display()
    ));
    std::fs::write(&conf, text).map_err(|e| format!("{}: {e}", conf.display()))?;
    Ok(trusted)
}

impl Cluster {
    /// Stop the server now (its watcher does, and removes the directory);
    /// true when that was seen within 30 s. Later uses of the cluster fail.
    pub fn stop(&self) -> bool {
        if std::fs::write(self.dir.join("stop"), b"").is_err() {
            return !self.dir.exists();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.dir.exists() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// A fresh, empty database; its URL.
    pub async fn database(&self) -> String {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        // The server may still be finishing its start-up.
        let (client, conn) = loop {
            match tokio_postgres::connect(&admin, tokio_postgres::NoTls).await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("connecting to the test cluster: {e}"),
            }
        };
        let conn = tokio::spawn(conn);
        tokio::time::timeout(
            Duration::from_secs(30),
            client.batch_execute(&format!("CREATE DATABASE {name}")),
        )
        .await
        .expect("CREATE DATABASE in time")
        .expect("CREATE DATABASE");
        drop(client);
        let _ = conn.await;
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

/// A TCP pipe to the cluster that a test can cut (every connection through
/// it dies, new ones are refused) and restore: a database outage, as the
/// gateway sees it.
pub struct Pipe {
    pub port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Pipe {
    pub async fn to(target_port: u16) -> Pipe {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            Default::default();
        let (o, l) = (open.clone(), links.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                l.lock().unwrap().push(link);
            }
        });
        Pipe {
            port,
            open,
            links,
            accept,
        }
    }

    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
