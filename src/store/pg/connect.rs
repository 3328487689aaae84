//! The connection: TLS, the pool, transactions, and the revocation
//! listener's own connection.

use super::*;

/// TLS to the server, verified: the public web roots plus the operator's
/// CAs (`storage.ca_file`). The URL's `sslmode` says whether it is used
/// (`disable`), tried (`prefer`, the default: a server without TLS is
/// spoken to in the clear) or required (`require`); whenever it is used,
/// the certificate and the host name are checked.
pub fn tls(ca_file: Option<&std::path::Path>) -> StoreResult<MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| StoreError::Backend(format!("reading {}: {e}", path.display())))?;
        let mut found = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| {
                StoreError::Backend(format!("a certificate in {}: {e}", path.display()))
            })?;
            roots.add(cert).map_err(|e| {
                StoreError::Backend(format!("a certificate in {}: {e}", path.display()))
            })?;
            found += 1;
        }
        if found == 0 {
            return Err(StoreError::Backend(format!(
                "no certificate in {}",
                path.display()
            )));
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(backend)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

impl PgStore {
    /// Connect (a pool, lazily) and run the migrations.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_with(url, None).await
    }

    /// [`PgStore::connect`], also trusting the CAs in `ca_file` (see [`tls`]).
    pub async fn connect_with(url: &str, ca_file: Option<&std::path::Path>) -> StoreResult<Self> {
        let tls = tls(ca_file)?;
        let mut cfg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Backend(format!("database url: {e}")))?;
        // Never hang on an unreachable server: fail, answer 503, retry.
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(std::time::Duration::from_secs(5));
        }
        cfg.keepalives_idle(std::time::Duration::from_secs(30));
        let mgr = Manager::from_config(
            cfg.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr).max_size(16).build().map_err(backend)?;
        let store = Self {
            pool,
            tls,
            instance: Uuid::new_v4(),
            config: cfg,
            events: std::sync::OnceLock::new(),
            commits: AtomicU64::new(0),
            ops: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Run `f` in one transaction; commit when it returns `Ok`.
    pub(super) async fn write<R, F>(&self, f: F) -> StoreResult<R>
    where
        F: for<'t> FnOnce(
            &'t Transaction<'t>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = StoreResult<R>> + Send + 't>,
        >,
    {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
        let result = async {
            let mut c = self.pool.get().await.map_err(backend)?;
            let tx = c.transaction().await.map_err(pg)?;
            let r = f(&tx).await?;
            tx.commit().await.map_err(pg)?;
            Ok(r)
        }
        .await;
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if result.is_ok() {
            self.commits.fetch_add(1, Ordering::Relaxed);
            self.ops.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    pub(super) async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(backend)
    }
}

/// Keep a `LISTEN` connection open (reconnecting with backoff), bumping
/// `tx` on every notification and on every (re)connect.
pub(super) async fn listen(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    tx: tokio::sync::watch::Sender<u64>,
) {
    let mut backoff = std::time::Duration::from_millis(100);
    loop {
        if tx.is_closed() {
            return;
        }
        match config.connect(tls.clone()).await {
            Ok((client, mut conn)) => {
                // The connection must be polled for LISTEN to be sent and
                // for notifications to arrive.
                let statement = format!("LISTEN {CHANNEL}");
                let listen = client.batch_execute(&statement);
                let mut listen = std::pin::pin!(listen);
                let mut listening = false;
                loop {
                    tokio::select! {
                        r = &mut listen, if !listening => {
                            if r.is_err() { break; }
                            listening = true;
                            backoff = std::time::Duration::from_millis(100);
                            // Anything sent while we were away is lost.
                            tx.send_modify(|n| *n += 1);
                        }
                        m = std::future::poll_fn(|cx| conn.poll_message(cx)) => match m {
                            Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                                tx.send_modify(|n| *n += 1);
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => break,
                        },
                        _ = tx.closed() => return,
                    }
                }
                tracing::warn!("revocation listener: connection lost; reconnecting");
            }
            Err(e) => tracing::warn!(cause = %e, "revocation listener: cannot connect"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
}
