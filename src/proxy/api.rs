//! `/auth/*` and `/.well-known/*`: answered locally. The body is read
//! (bounded in size and time), the request handed to
//! [`crate::accounts::AuthService::handle`] on the [`crate::executor::AuthExecutor`],
//! and its answer written back.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;
use pingora::Result;

use super::{Ctx, Gateway};
use crate::error::ApiError;
use crate::http::api::ApiRequest;

impl Gateway {
    /// Read a local request's body, bounded by `limits.max_body_bytes`.
    async fn read_body(
        &self,
        session: &mut Session,
        limit: usize,
    ) -> std::result::Result<Bytes, ApiError> {
        if let Some(len) = session
            .req_header()
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            if len > limit as u64 {
                return Err(ApiError::PayloadTooLarge);
            }
        }
        let expects_continue = session
            .req_header()
            .headers
            .get("expect")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue {
            session
                .as_downstream_mut()
                .write_continue_response()
                .await
                .map_err(|_| ApiError::BadRequest("The request could not be read."))?;
        }
        let mut buf = BytesMut::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if buf.len() + chunk.len() > limit {
                        return Err(ApiError::PayloadTooLarge);
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(_) => return Err(ApiError::BadRequest("The request body could not be read.")),
            }
        }
        Ok(buf.freeze())
    }

    pub(super) async fn serve_local(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        path: String,
    ) -> Result<bool> {
        ctx.local = true;
        // A whole-body deadline: a per-read timeout alone lets a client
        // trickle a body one byte at a time.
        let limits = &ctx.live.cfg.limits;
        let deadline = Duration::from_secs(limits.downstream_read_timeout_secs);
        let body =
            match tokio::time::timeout(deadline, self.read_body(session, limits.max_body_bytes))
                .await
                .unwrap_or(Err(ApiError::RequestTimeout))
            {
                Ok(b) => b,
                Err(e) => {
                    // The rest of the body is unread: do not reuse the connection.
                    session.set_keepalive(None);
                    return self.respond_error(session, ctx, e).await;
                }
            };
        let req = session.req_header();
        let mut headers = req.headers.clone();
        // HTTP/2 names the host in `:authority`; the handlers (the CSRF
        // Origin check) read `Host`.
        if !headers.contains_key(http::header::HOST) {
            if let Some(v) = req
                .uri
                .authority()
                .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
            {
                headers.insert(http::header::HOST, v);
            }
        }
        let api = ApiRequest {
            method: req.method.clone(),
            path,
            query: req.uri.query().map(str::to_string),
            headers,
            body,
            client_ip: ctx.client_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            request_id: ctx.request_id.clone(),
            tls: self.tls,
        };
        let auth = self.auth.clone();
        let resp = match self
            .executor
            .run(async move { auth.handle(api).await })
            .await
        {
            Some(r) => r,
            None => ApiError::Unavailable {
                retry_after: 1,
                cause: "the auth executor is stopping".into(),
            }
            .into_response(),
        };
        self.respond(session, ctx, resp).await?;
        Ok(true)
    }
}
