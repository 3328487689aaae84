//! HTTP deliveries from the outbox (webhooks, back-channel logouts): a POST
//! through the shared outbound client, signed at each attempt when the
//! entry names a webhook key. Any 2xx answer is a delivery; anything else,
//! or no answer within the entry's timeout, is a failed attempt.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::store::OutboxMessage;

use crate::outbound::{Outbound, OutboundOptions};

/// The largest answer read from a receiver (only its status matters).
const MAX_ANSWER: usize = 64 * 1024;

/// The config in force (a reload swaps it): where signing keys are found.
pub type ConfigSource = Arc<dyn Fn() -> Arc<Config> + Send + Sync>;

/// The clients made so far, by CA file and timeout (bounded by the config).
type Clients = HashMap<(Option<PathBuf>, u64), Arc<Outbound>>;

pub struct HttpSender {
    config: ConfigSource,
    /// One client per CA file and timeout.
    clients: parking_lot::Mutex<Clients>,
}

impl HttpSender {
    pub fn new(config: ConfigSource) -> Self {
        Self {
            config,
            clients: Default::default(),
        }
    }

    fn client(
        &self,
        ca_file: &Option<PathBuf>,
        timeout_secs: u64,
    ) -> Result<Arc<Outbound>, String> {
        let key = (ca_file.clone(), timeout_secs);
        if let Some(c) = self.clients.lock().get(&key) {
            return Ok(c.clone());
        }
        let c = Arc::new(
            Outbound::new(OutboundOptions {
                ca_file: ca_file.clone(),
                timeout: Duration::from_secs(timeout_secs),
                max_body: MAX_ANSWER,
            })
            .map_err(|e| format!("outbound client: {e}"))?,
        );
        self.clients.lock().insert(key, c.clone());
        Ok(c)
    }

    /// One attempt at `msg` (which must be an HTTP entry) at time `now`.
    pub async fn send(&self, msg: &OutboxMessage, now: i64) -> Result<(), String> {
        let Some(post) = &msg.http else {
            return Err("not an HTTP delivery".into());
        };
        let mut req = http::Request::builder()
            .method(http::Method::POST)
            .uri(post.url.as_str());
        for (name, value) in &post.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        if let Some(env_name) = &post.sign_with {
            // The key in force for this name now (a rotated secret signs
            // what is still queued); a webhook no longer configured is not
            // sent unsigned.
            let cfg = (self.config)();
            let Some(hook) = cfg.webhooks.iter().find(|h| &h.secret_env == env_name) else {
                return Err(format!(
                    "no [[webhooks]] with secret_env = {env_name} any more: not sent unsigned"
                ));
            };
            for (name, value) in crate::webhooks::signed_headers(&hook.key.0, msg, now) {
                req = req.header(name, value);
            }
        }
        let req = req
            .body(msg.body.as_bytes().to_vec())
            .map_err(|e| format!("building the request: {e}"))?;
        let client = self.client(&post.ca_file, post.timeout_secs)?;
        let timeout = Duration::from_secs(post.timeout_secs);
        let answer = tokio::time::timeout(timeout, client.send(req))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|e| e.to_string())?;
        if answer.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", answer.status()))
        }
    }
}
