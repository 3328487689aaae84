//! The built-in echo upstream for the out-of-the-box demo: it answers with
//! the request line and headers it received, so a new user sees exactly what
//! the gateway injected.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

pub struct EchoApp;

#[async_trait]
impl ServeHttp for EchoApp {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let _ = s.drain_request_body().await;
        let req = s.req_header();
        let mut out = format!(
            "echo upstream received:\n{} {} {:?}\n",
            req.method, req.uri, req.version
        );
        for (k, v) in req.headers.iter() {
            out.push_str(&format!(
                "{}: {}\n",
                k,
                String::from_utf8_lossy(v.as_bytes())
            ));
        }
        let body = out.into_bytes();
        Response::builder()
            .status(200)
            .header("content-type", "text/plain; charset=utf-8")
            .header("content-length", body.len().to_string())
            .body(body)
            .unwrap_or_default()
    }
}
