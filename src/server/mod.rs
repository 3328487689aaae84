//! Wiring: build every service from a validated [`Config`] and run them on
//! one Pingora server. The binary and the integration tests both come
//! through [`start`], so tests boot exactly what the binary runs.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use tokio::sync::watch;

use crate::accounts::AuthService;
use crate::admin::{AdminApp, Readiness, ReadinessProbe, TOKEN_FILE};
use crate::clock::Clock;
use crate::config::Config;
use crate::config::Storage;
use crate::demo::EchoApp;
use crate::executor::AuthExecutor;
use crate::mail::outbox::MailRuntime;
use crate::mail::outbox::OutboxWorker;
use crate::proxy::conn_limit::ConnLimit;
use crate::proxy::deadline::HeaderDeadline;
use crate::proxy::inflight::InFlight;
use crate::proxy::{Gateway, LiveProxy, ProxyConfig};
use crate::reload::{ConfigSource, Reloader};
use crate::store::pg_store::PgStore;
use crate::store::sled_store::SledStore;
use crate::store::{Store, StoreError};
use crate::tokens::keys::{load_or_create_secret, random_bytes};
use arc_swap::ArcSwap;
pub use background::SWEEP_EVERY;
use background::{Maintenance, RevocationFeed};

mod background;

/// The file in `data_dir` that remembers which database this data dir
/// holds (the same id is stamped into the database when it is created).
pub const STORE_ID_FILE: &str = "store.id";

/// Open the configured store: sled (checked against `data_dir/store.id`,
/// with its lock error mapped to a clear message), or PostgreSQL
/// (connecting and running the migrations).
pub fn open_store(cfg: &Config) -> Result<Arc<dyn Store>, String> {
    match &cfg.storage {
        Storage::Sled { path, cache_bytes } => {
            Ok(open_sled_checked(cfg, path, *cache_bytes, false)?)
        }
        Storage::Postgres { url, ca_file } => {
            let (url, ca) = (url.0.clone(), ca_file.clone());
            let store =
                crate::store::block_on(
                    async move { PgStore::connect_with(&url, ca.as_deref()).await },
                )?
                .map_err(|e| format!("opening the PostgreSQL store: {e}"))?;
            Ok(Arc::new(store))
        }
    }
}

/// [`open_store`] for `portcullis restore`: a sled database that is empty
/// where the data dir held one (lost, the case a restore is for) is
/// accepted, and becomes the data dir's database once stamped. Whether it
/// is empty is the restore's to check.
pub fn open_store_for_restore(cfg: &Config) -> Result<Arc<dyn Store>, String> {
    match &cfg.storage {
        Storage::Sled { path, cache_bytes } => {
            Ok(open_sled_checked(cfg, path, *cache_bytes, true)?)
        }
        Storage::Postgres { .. } => open_store(cfg),
    }
}

/// A sled database that opens empty where this data dir has held one (its
/// `store.id` exists, the database has no stamp) was deleted, truncated or
/// replaced: sled would start afresh and the gateway would run with an
/// empty revocation list and no accounts. That is refused.
///
/// With `adopt` (a restore, which fills an empty database), an empty one is
/// stamped afresh and becomes this data dir's database.
fn open_sled_checked(
    cfg: &Config,
    path: &std::path::Path,
    cache_bytes: u64,
    adopt: bool,
) -> Result<Arc<SledStore>, String> {
    create_private_dir(&cfg.server.data_dir)?;
    let store = open_sled(path, cfg.server.auth_nice, cache_bytes)?;
    let id_file = cfg.server.data_dir.join(STORE_ID_FILE);
    let remembered = match std::fs::read_to_string(&id_file) {
        Ok(s) => Some(s.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("reading '{}': {e}", id_file.display())),
    };
    let stamp = store
        .stamp()
        .map_err(|e| format!("opening the database: {e}"))?;
    match (stamp, remembered) {
        (Some(s), Some(r)) if s == r => {}
        (Some(s), Some(_)) => {
            return Err(format!(
                "the database at '{}' (id {s}) is not the one this data dir held ('{}'): \
                 refusing to start; restore the right database or remove that file",
                path.display(),
                id_file.display()
            ))
        }
        (None, Some(_)) if !adopt => {
            return Err(format!(
                "the database at '{}' is empty, but this data dir held one ('{}' exists): \
                 it was deleted or corrupted; refusing to start without its revocations. \
                 Restore it from a backup, or remove that file to start afresh",
                path.display(),
                id_file.display()
            ))
        }
        (Some(s), None) => write_secret_file(&id_file, &s)?,
        (None, _) => {
            let id = uuid::Uuid::new_v4().to_string();
            store
                .set_stamp(&id)
                .map_err(|e| format!("opening the database: {e}"))?;
            write_secret_file(&id_file, &id)?;
        }
    }
    Ok(store)
}

fn write_secret_file(path: &std::path::Path, text: &str) -> Result<(), String> {
    use crate::fsutil::{write_atomic, Existing};
    write_atomic(path, text.as_bytes(), 0o600, Existing::Replace)
        .map_err(|e| format!("writing '{}': {e}", path.display()))
}

fn open_sled(path: &std::path::Path, nice: u8, cache_bytes: u64) -> Result<Arc<SledStore>, String> {
    if let Some(parent) = path.parent() {
        create_private_dir(parent)?;
    }
    match SledStore::open_with(path, nice, cache_bytes) {
        Ok(s) => Ok(Arc::new(s)),
        Err(e) => {
            let s = e.to_string();
            Err(
                if s.contains("lock")
                    || s.contains("WouldBlock")
                    || s.contains("Resource temporarily unavailable")
                {
                    format!(
                        "the database at '{}' is in use by another process",
                        path.display()
                    )
                } else {
                    format!("opening the database: {s}")
                },
            )
        }
    }
}

pub fn create_private_dir(dir: &std::path::Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating '{}': {e}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// The admin token, generated into `data_dir` (0600) on first use.
pub fn admin_token(cfg: &Config) -> Result<Vec<u8>, String> {
    create_private_dir(&cfg.server.data_dir)?;
    let raw = load_or_create_secret(&cfg.server.data_dir.join(TOKEN_FILE), || {
        crate::tokens::jwt::opaque_token(32).into_bytes()
    })
    .map_err(|e| format!("admin token: {e}"))?;
    let _ = random_bytes;
    Ok(raw.trim_ascii().to_vec())
}

/// Stops the server when told to through a channel (tests), or on
/// SIGTERM/SIGINT (the binary); both shut down gracefully: requests in
/// flight get up to `grace` to finish before Pingora stops the services
/// (Pingora itself would only sleep a fixed grace period, then cancel them).
struct Shutdown {
    rx: watch::Receiver<bool>,
    signals: bool,
    /// SIGHUP reloads the config (only where `signals`).
    reloader: Arc<Reloader>,
    inflight: Arc<InFlight>,
    grace: Duration,
    /// Not ready from the first moment of a shutdown.
    readiness: Arc<Readiness>,
}

impl Shutdown {
    async fn drain(&self) -> ShutdownSignal {
        // `/readyz` answers 503 from now on, so a balancer stops sending
        // while the requests in flight finish.
        self.readiness.start_draining();
        if self.signals {
            crate::sd_notify("STOPPING=1");
        }
        tracing::info!("draining: /readyz now answers 503");
        let n = self.inflight.count();
        if n > 0 {
            tracing::info!(in_flight = n, "waiting for requests in flight");
            if !self.inflight.wait_idle(self.grace).await {
                tracing::warn!(
                    in_flight = self.inflight.count(),
                    "grace period over; stopping with requests in flight"
                );
            }
        }
        ShutdownSignal::GracefulTerminate
    }
}

/// Logged once SIGTERM, SIGINT and SIGHUP are handled (tests wait for it).
pub const SIGNALS_HANDLED: &str =
    "SIGTERM and SIGINT now shut down gracefully; SIGHUP reloads the config";

#[async_trait]
impl ShutdownSignalWatch for Shutdown {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.rx.clone();
        if self.signals {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
                signal(SignalKind::hangup()),
            ) else {
                let _ = rx.wait_for(|v| *v).await;
                return self.drain().await;
            };
            // Until now a signal had its default action (or none, where
            // the parent ignored it): say when it is handled.
            tracing::info!("{SIGNALS_HANDLED}");
            loop {
                let reload = tokio::select! {
                    _ = term.recv() => {
                        tracing::info!("SIGTERM: shutting down gracefully");
                        false
                    }
                    _ = int.recv() => {
                        tracing::info!("SIGINT: shutting down gracefully");
                        false
                    }
                    _ = hup.recv() => true,
                    _ = rx.wait_for(|v| *v) => false,
                };
                if !reload {
                    break;
                }
                let reloader = self.reloader.clone();
                // Outcome logged and counted by the reloader.
                let _ = tokio::task::spawn_blocking(move || reloader.reload("SIGHUP")).await;
            }
        } else {
            let _ = rx.wait_for(|v| *v).await;
        }
        self.drain().await
    }
}

/// A running gateway.
pub struct GatewayHandle {
    pub auth: Arc<AuthService>,
    /// Applies a new config (and the data dir's signing keys) in place.
    pub reloader: Arc<Reloader>,
    /// Where `/auth/*` handlers run.
    pub executor: Arc<AuthExecutor>,
    /// Maintenance sweeps completed (see [`SWEEP_EVERY`]).
    pub sweeps: Arc<std::sync::atomic::AtomicU64>,
    /// What `/readyz` reports besides the store.
    pub readiness: Arc<Readiness>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub listen: Option<SocketAddr>,
    pub tls_listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
}

impl GatewayHandle {
    /// Read the config source again and apply it, as SIGHUP does.
    pub fn reload(&self) -> Result<crate::reload::Applied, crate::reload::Refused> {
        self.reloader.reload("api")
    }

    /// Graceful stop; returns when every service has exited and the store
    /// is flushed and closed.
    pub fn stop(mut self) {
        self.shutdown_and_join();
    }

    /// Begin a graceful shutdown without waiting for it: `/readyz` turns
    /// 503 at once, requests in flight finish; [`GatewayHandle::stop`] or
    /// dropping the handle waits for the end.
    pub fn begin_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Block until the server exits (signal).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn shutdown_and_join(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        self.shutdown_and_join();
    }
}

/// The proxy application for one public listener: the Pingora hooks, with
/// the whole-header deadline in front (HTTP/1) and an idle timeout on
/// HTTP/2 connections.
#[allow(clippy::too_many_arguments)]
fn proxy_app(
    cfg: &Arc<Config>,
    live: &Arc<LiveProxy>,
    auth: &Arc<AuthService>,
    executor: &Arc<AuthExecutor>,
    inflight: &Arc<InFlight>,
    conf: &Arc<ServerConf>,
    tls: bool,
    connections: &Arc<ConnLimit>,
) -> Result<HeaderDeadline<pingora::proxy::HttpProxy<Gateway>>, String> {
    let gw = Gateway::new(live.clone(), auth.clone(), executor.clone(), tls)
        .with_inflight(inflight.clone());
    let mut proxy = pingora::proxy::http_proxy(conf, gw);
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2_idle_timeout = Some(Duration::from_secs(cfg.limits.h2_idle_timeout_secs));
    proxy.server_options = Some(options);
    // Slowloris: a whole request header must arrive within this time.
    let header_timeout = Duration::from_secs(cfg.limits.downstream_read_timeout_secs);
    Ok(HeaderDeadline::new(
        proxy,
        header_timeout,
        connections.clone(),
    ))
}

fn check_bindable(addr: SocketAddr, name: &str) -> Result<(), String> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| format!("{name}: cannot listen on {addr}: {e}"))
}

pub(crate) use crate::config::warn_if_links_are_logged;

/// Build and start every service; returns once the listeners accept. A
/// gateway started this way has no config file to reload from: see
/// [`start_with_source`].
pub fn start(
    cfg: Config,
    clock: Arc<dyn Clock>,
    handle_signals: bool,
) -> Result<GatewayHandle, String> {
    start_with_source(cfg, None, clock, handle_signals)
}

/// [`start`], with where a reload (SIGHUP, `POST /admin/reload`,
/// [`GatewayHandle::reload`]) reads the config again.
pub fn start_with_source(
    cfg: Config,
    source: Option<ConfigSource>,
    clock: Arc<dyn Clock>,
    handle_signals: bool,
) -> Result<GatewayHandle, String> {
    let cfg = Arc::new(cfg);
    check_host(&cfg)?;
    let core = open_core(&cfg, source, clock)?;
    let s = &cfg.server;
    let inflight = Arc::new(InFlight::default());
    let executor = Arc::new(AuthExecutor::new(s.auth_threads, s.auth_nice)?);
    let mut server = pingora_server(&cfg);
    add_listeners(&mut server, &cfg, &core, &executor, &inflight)?;
    let sweeps = add_background_tasks(&mut server, &core);
    let Core {
        auth,
        reloader,
        readiness,
        store,
        ..
    } = core;
    drop(store);

    let (tx, rx) = watch::channel(false);
    let thread = spawn_server_thread(
        server,
        Shutdown {
            rx,
            signals: handle_signals,
            reloader: reloader.clone(),
            inflight,
            grace: Duration::from_secs(s.grace_period_secs),
            readiness: readiness.clone(),
        },
        auth.store.clone(),
    )?;

    let handle = GatewayHandle {
        auth,
        reloader,
        executor,
        sweeps,
        readiness,
        stop: tx,
        thread: Some(thread),
        listen: s.listen,
        tls_listen: s.tls_listen,
        admin_listen: s.admin_listen,
    };
    wait_until_accepting(handle)
}

/// Start-up's first step, before anything is opened: the data dir, the
/// TLS pair, and every listen address free.
fn check_host(cfg: &Config) -> Result<(), String> {
    let s = &cfg.server;
    create_private_dir(&s.data_dir)?;
    if s.tls_listen.is_some() {
        crate::tls::ensure_dev_pair(&s.tls_cert, &s.tls_key)?;
        crate::tls::check_pair(&s.tls_cert, &s.tls_key)?;
    }
    for (addr, name) in [
        (s.listen, "server.listen"),
        (s.tls_listen, "server.tls_listen"),
        (s.admin_listen, "server.admin_listen"),
        (cfg.demo_echo, "demo.echo_listen"),
    ] {
        if let Some(a) = addr {
            check_bindable(a, name)?;
        }
    }
    warn_if_links_are_logged(cfg);
    Ok(())
}

/// What the listeners and background tasks share, built before the Pingora
/// server: the admin token, the clock, the store, the account service, the mail
/// runtime, the routes, the reloader and the readiness.
struct Core {
    admin_token: Vec<u8>,
    clock: Arc<dyn Clock>,
    store: Arc<dyn Store>,
    metrics: Arc<crate::metrics::Metrics>,
    auth: Arc<AuthService>,
    mail: Arc<ArcSwap<MailRuntime>>,
    live: Arc<LiveProxy>,
    reloader: Arc<Reloader>,
    readiness: Arc<Readiness>,
}

/// Open the store and the secrets, and build the services on them; marks
/// the gateway started.
fn open_core(
    cfg: &Arc<Config>,
    source: Option<ConfigSource>,
    clock: Arc<dyn Clock>,
) -> Result<Core, String> {
    let s = &cfg.server;
    let admin_token = admin_token(cfg)?;
    let store: Arc<dyn Store> = open_store(cfg)?;
    // This gateway's own registry, scraped on its admin listener.
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let auth = Arc::new(AuthService::with_metrics(
        cfg.clone(),
        store.clone(),
        clock.clone(),
        metrics.clone(),
    )?);
    let mail = Arc::new(ArcSwap::from_pointee(MailRuntime::build(&cfg.mail)?));
    let live: Arc<LiveProxy> = Arc::new(ArcSwap::from_pointee(
        ProxyConfig::build(cfg.clone(), &auth.metrics).map_err(|e| format!("routes: {e}"))?,
    ));
    let reloader = Arc::new(Reloader::new(
        source,
        auth.clone(),
        live.clone(),
        mail.clone(),
    ));
    // Every listener, probed until seen accepting (the admin one only for
    // start-up: it answers `/readyz` itself).
    let readiness = Arc::new(Readiness::new(
        [
            (s.listen, "server.listen", true),
            (s.tls_listen, "server.tls_listen", true),
            (cfg.demo_echo, "demo.echo_listen", true),
            (s.admin_listen, "server.admin_listen", false),
        ]
        .into_iter()
        .filter_map(|(addr, name, reported)| addr.map(|a| (name, a, reported)))
        .collect(),
    ));
    // The key set, revocations and API key index were loaded above
    // (`AuthService::with_metrics`), the routes and mail runtime built.
    readiness.mark_started();
    Ok(Core {
        admin_token,
        clock,
        store,
        metrics,
        auth,
        mail,
        live,
        reloader,
        readiness,
    })
}

/// The Pingora server, bootstrapped, with no service yet.
fn pingora_server(cfg: &Config) -> Server {
    let s = &cfg.server;
    let mut conf = ServerConf {
        threads: s.threads,
        // The grace period is spent in `Shutdown::drain`, waiting only as
        // long as requests are in flight; Pingora's is a fixed sleep.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(5),
        // Off by default: one single-threaded runtime per thread,
        // connections spread over them, no cross-thread wakeups or stealing
        // on the proxy path (benches/compare.sh). The auth handlers run on
        // their own executor, so nothing slow shares these threads.
        work_stealing: s.work_stealing,
        ..Default::default()
    };
    conf.pid_file = s.data_dir.join("portcullis.pid").display().to_string();
    conf.upgrade_sock = s.data_dir.join("upgrade.sock").display().to_string();
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server
}

/// The listening services: the public HTTP and HTTPS listeners, the admin
/// listener and the demo echo upstream, each where configured.
fn add_listeners(
    server: &mut Server,
    cfg: &Arc<Config>,
    core: &Core,
    executor: &Arc<AuthExecutor>,
    inflight: &Arc<InFlight>,
) -> Result<(), String> {
    let s = &cfg.server;
    let (live, auth) = (&core.live, &core.auth);
    let conf = server.configuration.clone();
    // One cap over both public listeners.
    let connections = ConnLimit::new(cfg.limits.max_connections);

    if let Some(addr) = s.listen {
        let app = proxy_app(
            cfg,
            live,
            auth,
            executor,
            inflight,
            &conf,
            false,
            &connections,
        )?;
        let mut svc = Service::new("portcullis http".to_string(), app);
        svc.add_tcp(&addr.to_string());
        server.add_service(svc);
    }
    if let Some(addr) = s.tls_listen {
        let app = proxy_app(
            cfg,
            live,
            auth,
            executor,
            inflight,
            &conf,
            true,
            &connections,
        )?;
        let mut svc = Service::new("portcullis https".to_string(), app);
        let mut tls = TlsSettings::intermediate(
            &s.tls_cert.display().to_string(),
            &s.tls_key.display().to_string(),
        )
        .map_err(|e| format!("TLS settings: {e}"))?;
        tls.enable_h2();
        svc.add_tls_with_settings(&addr.to_string(), None, tls);
        svc.endpoints()
            .set_pre_tls_callback(Arc::new(crate::tls::ClientHelloDeadline {
                timeout: Duration::from_secs(cfg.limits.downstream_read_timeout_secs),
            }));
        server.add_service(svc);
    }
    if let Some(addr) = s.admin_listen {
        let mut svc = Service::new(
            "portcullis admin".to_string(),
            AdminApp {
                auth: auth.clone(),
                token: core.admin_token.clone(),
                connections: connections.clone(),
                reloader: core.reloader.clone(),
                readiness: core.readiness.clone(),
            },
        );
        svc.add_tcp(&addr.to_string());
        server.add_service(svc);
    }
    if let Some(addr) = cfg.demo_echo {
        let mut svc = Service::new("demo echo upstream".to_string(), EchoApp);
        svc.add_tcp(&addr.to_string());
        server.add_service(svc);
    }
    Ok(())
}

/// The background services: the mail outbox, the revocation feed, the
/// readiness probe and maintenance; returns maintenance's sweep count.
fn add_background_tasks(server: &mut Server, core: &Core) -> Arc<std::sync::atomic::AtomicU64> {
    server.add_service(background_service(
        "outbox",
        OutboxWorker {
            store: core.store.clone(),
            mail: core.mail.clone(),
            http: Arc::new(crate::mail::http::HttpSender::new({
                let auth = core.auth.clone();
                Arc::new(move || auth.cfg())
            })),
            clock: core.clock.clone(),
            wake: core.auth.mail_wake.clone(),
            metrics: core.metrics.clone(),
            backchannel: Some(Arc::new(
                crate::oidc_provider::backchannel::BackchannelSender::new(core.auth.clone()),
            )),
        },
    ));
    server.add_service(background_service(
        "revocation feed",
        RevocationFeed {
            auth: core.auth.clone(),
        },
    ));
    server.add_service(background_service(
        "readiness probe",
        ReadinessProbe(core.readiness.clone()),
    ));
    let sweeps = Arc::new(std::sync::atomic::AtomicU64::new(0));
    server.add_service(background_service(
        "maintenance",
        Maintenance {
            auth: core.auth.clone(),
            sweeps: sweeps.clone(),
        },
    ));
    sweeps
}

/// Run the server on its own thread until `shutdown` says stop, then
/// checkpoint the store.
fn spawn_server_thread(
    server: Server,
    shutdown: Shutdown,
    last_store: Arc<dyn Store>,
) -> Result<std::thread::JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name("portcullis".into())
        .spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(shutdown),
            });
            // The services' runtimes are gone, and with them maybe the
            // maintenance task's last checkpoint: write out what the store
            // still holds in memory before the stop returns.
            let done = crate::store::block_on(async move { last_store.checkpoint().await });
            if let Err(e) = done.map_err(StoreError::Backend).and_then(|r| r) {
                tracing::error!(cause = %e, "store checkpoint at shutdown");
            }
        })
        .map_err(|e| format!("starting the server thread: {e}"))
}

/// The readiness probe (a background service) marks each listener once it
/// accepts; wait for all of them.
fn wait_until_accepting(handle: GatewayHandle) -> Result<GatewayHandle, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !handle.readiness.all_accepting() {
        // Stopped (e.g. by a signal) before every listener was seen
        // accepting: nothing left to wait for.
        if handle.thread.as_ref().is_some_and(|t| t.is_finished()) {
            return Ok(handle);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "not accepting connections: {}",
                handle.readiness.not_accepting().join(", ")
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(handle)
}
