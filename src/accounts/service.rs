//! The account service's state ([`AuthService`]: store, token machinery,
//! hasher, throttle, in-memory indexes, metrics), its construction, and the
//! checks the proxy makes on every request (bearer, API key). The account
//! operations are in the sibling modules; nothing here knows about HTTP.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderMap;
use tokio::sync::Notify;
use uuid::Uuid;

use super::password::Hasher;
use super::throttle::Throttle;
use super::{apikeys, passkeys, totp as mfa};
use crate::browser;
use crate::clock::Clock;
use crate::config::Config;
use crate::entropy::{Entropy, OsEntropy};
use crate::metrics::Metrics;
use crate::store::{self, Sessions, Stamp, Store, StoreError, User, UserChange};
use crate::tokens::jwt::TokenService;
use crate::tokens::keys;
use crate::tokens::refresh::RefreshKeys;
use crate::tokens::revocation::Revocations;
use crate::tokens::{AccessClaims, TokenRejection};
use store::counters::MemCounters;
use store::domain::LockoutPolicy;

pub use crate::names::valid_role;

pub struct AuthService {
    /// The config in force; swapped whole by a reload ([`crate::reload`]).
    /// Read it through [`AuthService::cfg`].
    live_cfg: ArcSwap<Config>,
    pub store: Arc<dyn Store>,
    pub tokens: TokenService,
    pub refresh: RefreshKeys,
    pub revocations: Arc<Revocations>,
    /// How far the in-memory revocations follow a shared backend.
    pub revocation_seq: std::sync::atomic::AtomicI64,
    /// The store's token horizon as last read or raised by this gateway
    /// (see [`Store::token_horizon`]): the longest access-token lifetime
    /// plus leeway ever in force on the store, in seconds.
    token_horizon: std::sync::atomic::AtomicU64,
    pub hasher: Hasher,
    pub throttle: Throttle,
    /// The per-route rate limits: on the proxy's hot path, so in memory and
    /// per gateway (see the README).
    pub route_limits: MemCounters,
    pub clock: Arc<dyn Clock>,
    pub mail_wake: Arc<Notify>,
    /// This gateway's metrics (its own registry).
    pub metrics: Arc<Metrics>,
    /// Seals TOTP secrets at rest.
    pub mfa_key: mfa::SealKey,
    /// Every usable API key, for the proxy's in-memory check.
    pub api_keys: apikeys::KeyIndex,
    /// Browser sessions: the access token issued per session cookie.
    pub cookies: browser::CookieSessions,
    /// Passkey ceremonies in flight.
    pub ceremonies: passkeys::Ceremonies,
    /// Where tokens, ids and codes come from (fixed in tests).
    pub entropy: Arc<dyn Entropy>,
    /// Outside providers' protocol client (CONTRACT 8.1).
    pub federation: crate::federation::Federation,
    /// Seals the state of a sign-in at a provider and its `login_code`.
    pub fed_sealer: crate::federation::Sealer,
}

impl AuthService {
    /// With metrics of its own (a registry nobody scrapes: the CLI).
    pub fn new(
        cfg: Arc<Config>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        Self::with_metrics(cfg, store, clock, Arc::new(Metrics::new()))
    }

    pub fn with_metrics(
        cfg: Arc<Config>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        Self::build(cfg, store, clock, metrics, true)
    }

    /// For one admin command on the database itself (`portcullis user …`):
    /// nothing is preloaded. The revocation list and the API key index
    /// serve the token and key checks of a running gateway; a command
    /// reads the one user it names (or a page of users), and what it
    /// revokes is written to the store as always.
    pub fn for_admin(
        cfg: Arc<Config>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        Self::build(cfg, store, clock, Arc::new(Metrics::new()), false)
    }

    fn build(
        cfg: Arc<Config>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        preload: bool,
    ) -> Result<Self, String> {
        let keys = keys::load(&cfg.tokens, &cfg.server.data_dir, clock.now())?;
        let tokens = TokenService::new(keys, cfg.tokens.clone(), clock.clone());
        tokens
            .provider
            .set(crate::tokens::provider_keys::load(&cfg, clock.now())?);
        let refresh = match &cfg.tokens.refresh_secret {
            Some(secret) => RefreshKeys::from_secret(secret.0.as_bytes()),
            None => RefreshKeys::load(&cfg.server.data_dir)?,
        };
        // The token horizon is raised to this config's lifetime before any
        // token is signed or accepted under it, so no sweep (here or on
        // another gateway) forgets a revocation too early.
        let horizon = {
            let store = store.clone();
            let at_least = horizon_secs(&cfg);
            store::block_on(async move { store.token_horizon(at_least).await })?
                .map_err(|e| format!("recording the token lifetime in the store: {e}"))?
        };
        // Never run with an empty blacklist: a store that cannot be read
        // stops the start.
        let (revoked, seq) = if !preload {
            (Ok(Vec::new()), 0)
        } else {
            let store = store.clone();
            store::block_on(async move {
                // A shared backend also says how far this snapshot goes, so
                // the fan-out (server::RevocationFeed) continues from there.
                let (revoked, seq) = match store.revocations_since(0).await {
                    Ok(Some((revs, seq))) => (Ok(revs), seq),
                    Ok(None) => (store.list_revocations().await, 0),
                    Err(e) => (Err(e), 0),
                };
                (revoked, seq)
            })?
        };
        let revocations = Arc::new(Revocations::new(
            &revoked.map_err(|e| format!("loading revocations: {e}"))?,
        ));
        {
            // A write whose outcome is unknown counts its revocations as
            // done (see `Store::set_revocation_sink`).
            let revocations = revocations.clone();
            store.set_revocation_sink(Arc::new(move |r| revocations.apply(r)));
        }
        let mfa_key = mfa::SealKey::load(
            cfg.tokens.mfa_key.as_ref().map(|s| s.0.as_str()),
            &cfg.server.data_dir,
        )?;
        let api_keys = if preload {
            load_api_keys(&store)?
        } else {
            apikeys::KeyIndex::default()
        };
        let throttle = Throttle::new(store.clone(), clock.clone());
        let hasher = Hasher::new(&cfg.passwords)
            .map_err(|e| e.to_string())?
            .count_rejections_in(metrics.hash_queue_rejected.clone());
        let federation = crate::federation::Federation::new(clock.clone());
        let fed_sealer = crate::federation::Sealer::new(refresh.derive(b"federation state v1"));
        Ok(Self {
            live_cfg: ArcSwap::new(cfg),
            store,
            tokens,
            refresh,
            revocations,
            revocation_seq: std::sync::atomic::AtomicI64::new(seq),
            token_horizon: std::sync::atomic::AtomicU64::new(horizon),
            hasher,
            throttle,
            route_limits: MemCounters::default(),
            clock,
            mail_wake: Arc::new(Notify::new()),
            metrics,
            mfa_key,
            api_keys,
            cookies: browser::CookieSessions::default(),
            ceremonies: passkeys::Ceremonies::default(),
            entropy: Arc::new(OsEntropy),
            federation,
            fed_sealer,
        })
    }

    /// The config in force (one atomic load; a reload swaps it whole, so
    /// what one call returns is one consistent config).
    pub fn cfg(&self) -> Arc<Config> {
        self.live_cfg.load_full()
    }

    /// Raise the store's token horizon to `cfg`'s token lifetime plus
    /// leeway; a reload calls it before it puts `cfg` in force (blocking:
    /// a reload is synchronous).
    pub fn raise_token_horizon(&self, cfg: &Config) -> Result<(), String> {
        let (store, at_least) = (self.store.clone(), horizon_secs(cfg));
        let secs = store::block_on(async move { store.token_horizon(at_least).await })?
            .map_err(|e| format!("recording the token lifetime in the store: {e}"))?;
        self.token_horizon
            .fetch_max(secs, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// The store's token horizon now (raised to the config in force
    /// first), for a sweep: what the store and the in-memory revocations
    /// are pruned by. Read afresh, so a longer lifetime another gateway
    /// on a shared store has recorded counts.
    pub async fn read_token_horizon(&self) -> Result<u64, StoreError> {
        let secs = self.store.token_horizon(horizon_secs(&self.cfg())).await?;
        let old = self
            .token_horizon
            .fetch_max(secs, std::sync::atomic::Ordering::SeqCst);
        Ok(secs.max(old))
    }

    /// The token horizon as this gateway knows it (never below the config
    /// in force).
    pub fn token_horizon(&self) -> u64 {
        self.token_horizon
            .load(std::sync::atomic::Ordering::SeqCst)
            .max(horizon_secs(&self.cfg()))
    }

    /// Put a reloaded config in force (see [`crate::reload`]): what is
    /// derived from it inside this service (the token settings) follows.
    pub fn swap_config(&self, cfg: Arc<Config>) {
        self.tokens.reconfigure(cfg.tokens.clone());
        self.live_cfg.store(cfg);
    }

    /// Reload a user's API keys after another gateway changed them (or
    /// what they depend on): replaced in one step by what the store holds
    /// now, so the user's other keys never fail meanwhile; a failed read
    /// drops them all (fail closed) until a later round reloads them.
    pub async fn reload_keys(&self, user: Uuid) -> Result<(), StoreError> {
        match self.store.find_user(user).await {
            Ok(Some(u)) => self.api_keys.load_user(&u),
            Ok(None) => self.api_keys.forget_user(user),
            Err(e) => {
                self.api_keys.forget_user(user);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Write the API key uses noted in memory (`last_used_at`).
    pub async fn flush_key_uses(&self) {
        for (user, uses) in self.api_keys.take_uses() {
            match self
                .store
                .change_user(user, UserChange::ApiKeysUsed(uses), None, self.stamp())
                .await
            {
                Ok(_) | Err(StoreError::Conflict) => {}
                Err(e) => tracing::warn!(cause = %e, "writing API key uses"),
            }
        }
    }

    /// The bearer check used by proxied routes and `/auth/*` alike.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<AccessClaims>, TokenRejection> {
        self.check_presented(bearer(headers))
    }

    /// An access token checked as the bearer check does (signature, times,
    /// revocations), counted in the token-check metrics.
    pub fn check_token(&self, token: &str) -> Result<Arc<AccessClaims>, TokenRejection> {
        self.check_presented(Ok(token))
    }

    /// [`Self::check_token`] of a token presented, or of why none was (a
    /// missing or malformed bearer is counted as such).
    pub fn check_presented(
        &self,
        presented: Result<&str, TokenRejection>,
    ) -> Result<Arc<AccessClaims>, TokenRejection> {
        let result = presented.and_then(|t| self.verify_live(t));
        self.metrics
            .token_checks()
            .count(result.as_ref().err().copied());
        result
    }

    fn verify_live(&self, token: &str) -> Result<Arc<AccessClaims>, TokenRejection> {
        let c = self.tokens.verify(token)?;
        if self.revocations.is_revoked(&c) {
            return Err(TokenRejection::Revoked);
        }
        Ok(c)
    }

    /// Draw tokens, ids and codes from `entropy` (tests fix it).
    pub fn with_entropy(mut self, entropy: Arc<dyn Entropy>) -> Self {
        self.tokens.set_entropy(entropy.clone());
        self.hasher = self.hasher.with_entropy(entropy.clone());
        self.entropy = entropy;
        self
    }

    /// The API key check of proxied routes: an in-memory lookup.
    pub fn authenticate_key(
        &self,
        key: &str,
    ) -> Result<Arc<apikeys::KeyEntry>, apikeys::KeyRejection> {
        let r = self.api_keys.check(key, self.clock.now());
        self.metrics
            .token_checks()
            .count_key(r.as_ref().err().copied());
        r
    }

    /// Now, and the time a session revocation written now carries: now
    /// plus the token horizon (the longest lifetime plus leeway ever in
    /// force, not the current one). The sweep keeps it a horizon beyond
    /// that (see `store::domain::revocation_is_dead`); a gateway of an
    /// older version, which drops it at that time, still keeps it as long
    /// as it ever did.
    pub fn stamp(&self) -> Stamp {
        let now = self.clock.now();
        Stamp {
            now,
            revoke_until: now + self.token_horizon() as i64,
        }
    }

    /// The account lockout policy (also applied to `current_password`).
    pub fn lockout(&self) -> LockoutPolicy {
        let cfg = self.cfg();
        let t = &cfg.throttle;
        LockoutPolicy {
            max_failures: t.max_failed_logins,
            window_secs: t.failure_window_secs,
            lock_secs: t.lockout_secs,
        }
    }

    /// End sessions of a user (and, with `cutoff`, every token issued until
    /// now); durable and in force when this returns. Returns how many
    /// sessions ended.
    pub async fn end_sessions(
        &self,
        user_id: Uuid,
        which: Sessions,
        cutoff: bool,
    ) -> Result<usize, StoreError> {
        self.end_sessions_with(user_id, which, cutoff, store::Effects::none())
            .await
    }

    /// Apply a change to the current user record, with everything it
    /// cascades to; durable and in force when this returns.
    pub async fn change_user(
        &self,
        id: Uuid,
        change: UserChange,
        mail: Option<store::OutboxMessage>,
    ) -> Result<User, StoreError> {
        self.change_user_with(id, change, mail.into()).await
    }
}

/// The longest a token signed under `cfg` is accepted after it was signed:
/// its lifetime plus the leeway.
pub fn horizon_secs(cfg: &Config) -> u64 {
    cfg.tokens.access_ttl_secs + cfg.tokens.leeway_secs
}

/// The bearer token from exactly one `Authorization: Bearer <token>` header.
/// Its characters are checked by [`tokens::TokenService::verify`], which
/// skips that for a token it has verified before.
pub fn bearer(headers: &HeaderMap) -> Result<&str, TokenRejection> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(v) = values.next() else {
        return Err(TokenRejection::Missing);
    };
    if values.next().is_some() {
        return Err(TokenRejection::Invalid);
    }
    let v = std::str::from_utf8(v.as_bytes()).map_err(|_| TokenRejection::Invalid)?;
    let (scheme, token) = v.split_once(' ').ok_or(TokenRejection::Invalid)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenRejection::Invalid);
    }
    let token = token.trim_matches(|c| c == ' ' || c == '\t');
    if token.is_empty() {
        return Err(TokenRejection::Invalid);
    }
    Ok(token)
}

/// The API key index, read page by page: only the users who hold keys (or
/// held them) stay in memory, never every account at once.
fn load_api_keys(store: &Arc<dyn Store>) -> Result<apikeys::KeyIndex, String> {
    let index = apikeys::KeyIndex::default();
    // A backend that indexes the key holders (sled) hands over just those.
    let holders = {
        let store = store.clone();
        store::block_on(async move { store.api_key_holders().await })?
            .map_err(|e| format!("loading API keys: {e}"))?
    };
    if let Some(users) = holders {
        for u in &users {
            index.load_user(u);
        }
        return Ok(index);
    }
    let mut cursor = None;
    loop {
        let page = {
            let store = store.clone();
            store::block_on(async move {
                store
                    .export(store::RecordKind::Users, cursor, API_KEY_PAGE)
                    .await
            })?
            .map_err(|e| format!("loading API keys: {e}"))?
        };
        for record in &page.records {
            if let store::Record::User(u) = record {
                index.load_user(u);
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(index),
        }
    }
}

/// Users read per page while loading the API key index.
const API_KEY_PAGE: usize = 2000;
