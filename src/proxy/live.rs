//! What the proxy derives from one config: the route table with each
//! route's balancer, prebuilt upstream peers, metric handles and assertion
//! cache. A reload builds a new [`ProxyConfig`] and swaps it in whole.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::lb::{selection::RoundRobin, LoadBalancer};
use pingora::prelude::HttpPeer;

use super::{access, assertion};
use crate::config::{Config, Route, Upstream};
use crate::metrics::RouteMetrics;

pub struct RouteRuntime {
    pub route: Route,
    lb: LoadBalancer<RoundRobin>,
    /// One prebuilt peer per upstream (with the configured timeouts),
    /// cloned per request.
    peers: Vec<HttpPeer>,
    pub(super) metrics: RouteMetrics,
    /// The signed assertions of a route with `identity_assertion`.
    pub(super) assertions: Option<assertion::AssertionCache>,
}

/// What the proxy derives from one config: the config itself and the route
/// table with its upstream balancers and metric handles. A reload builds a
/// new one and swaps it in whole ([`LiveProxy`]); each request loads it
/// once (in `new_ctx`), so a request sees one consistent config from its
/// first hook to its last, and requests already running finish on theirs.
pub struct ProxyConfig {
    pub cfg: Arc<Config>,
    pub(super) routes: Vec<RouteRuntime>,
    /// The access log's host labels (bounded: the configured hosts).
    pub(super) hosts: access::HostLabels,
}

/// The proxy state in force, shared by the plain and TLS listeners.
pub type LiveProxy = ArcSwap<ProxyConfig>;

impl ProxyConfig {
    pub fn build(cfg: Arc<Config>, metrics: &crate::metrics::Metrics) -> std::io::Result<Self> {
        let routes = cfg
            .routes
            .iter()
            .map(|r| {
                let lb = LoadBalancer::try_from_iter(r.upstreams.iter().map(|u| u.addr))?;
                let peers = r.upstreams.iter().map(|u| upstream_peer(u, &cfg)).collect();
                Ok(RouteRuntime {
                    route: r.clone(),
                    lb,
                    peers,
                    metrics: metrics.route(&r.label),
                    assertions: r
                        .identity_assertion
                        .then(|| assertion::AssertionCache::new(r.assertion_audience.clone())),
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let hosts = access::HostLabels::build(&cfg);
        Ok(Self { cfg, routes, hosts })
    }

    pub(super) fn pick_upstream(&self, idx: usize, key: &[u8]) -> Option<&HttpPeer> {
        let r = self.routes.get(idx)?;
        let backend = r.lb.select(key, 256)?;
        let addr = backend.addr.as_inet()?;
        let i = r.route.upstreams.iter().position(|u| &u.addr == addr)?;
        r.peers.get(i)
    }
}

/// The peer for one upstream, with the configured timeouts.
fn upstream_peer(up: &Upstream, cfg: &Config) -> HttpPeer {
    let mut peer = HttpPeer::new(up.addr, up.tls, up.sni.clone());
    let l = &cfg.limits;
    peer.options.connection_timeout = Some(Duration::from_secs(l.upstream_connect_timeout_secs));
    peer.options.total_connection_timeout =
        Some(Duration::from_secs(l.upstream_connect_timeout_secs * 2));
    peer.options.read_timeout = Some(Duration::from_secs(l.upstream_read_timeout_secs));
    peer.options.write_timeout = Some(Duration::from_secs(l.upstream_read_timeout_secs));
    peer
}
