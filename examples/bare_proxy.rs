//! The plain-Pingora control of `benches/compare.sh`: the least a Pingora
//! proxy can do (one prebuilt peer, no filters), built with the same Pingora
//! version and features as the gateway, so the comparison measures only
//! what Portcullis adds per request.
//!
//! `bare_proxy LISTEN UPSTREAM [THREADS [nosteal]]`, e.g.
//! `bare_proxy 127.0.0.1:9000 127.0.0.1:9001 1`; `nosteal` sets Pingora's
//! `work_stealing = false`.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct Bare(Box<HttpPeer>);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(self.0.clone())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: bare_proxy LISTEN UPSTREAM [THREADS [nosteal]]");
        std::process::exit(2);
    };
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1);
    let peer = HttpPeer::new(upstream.as_str(), false, String::new());
    let conf = ServerConf {
        threads,
        work_stealing: args.get(4).is_none_or(|a| a != "nosteal"),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = http_proxy_service(&server.configuration, Bare(Box::new(peer)));
    svc.add_tcp(listen);
    server.add_service(svc);
    server.run_forever();
}
