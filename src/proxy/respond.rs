//! Writing the answers the gateway gives itself: every local response
//! (with its security headers, `X-Request-Id` and any pending
//! `Set-Cookie`), errors, and the refusals of a proxied request.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use super::{headers, identity, Ctx, Gateway};
use crate::error::ApiError;
use crate::http::api::ApiResponse;

impl Gateway {
    /// Write a response the gateway answers itself. Every local answer
    /// goes through here (and `fail_to_proxy` too), so a cookie session
    /// rotated during this request always gets its new `Set-Cookie`, whatever
    /// the answer (403, 429, 502, the 302 to the portal): a browser left
    /// with the old cookie would replay it after the hand-over window, and
    /// that reads as refresh-token reuse, ending the session.
    pub(super) async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        resp: ApiResponse,
    ) -> Result<()> {
        let mut h = ResponseHeader::build(
            resp.status,
            Some(resp.headers.len() + ctx.set_cookies.len() + 8),
        )?;
        for (k, v) in &resp.headers {
            h.append_header(*k, v.as_str())?;
        }
        for c in ctx.set_cookies.drain(..) {
            h.append_header("set-cookie", c)?;
        }
        h.insert_header("content-length", resp.body.len().to_string())?;
        h.insert_header("x-request-id", ctx.request_id.as_str())?;
        headers::add_security_headers(&mut h, self.tls);
        let head = session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(h), head || resp.body.is_empty())
            .await?;
        if !head && !resp.body.is_empty() {
            session.write_response_body(Some(resp.body), true).await?;
        }
        Ok(())
    }

    pub(super) async fn respond_error(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        e: ApiError,
    ) -> Result<bool> {
        self.respond(session, ctx, e.into_response()).await?;
        Ok(true)
    }

    /// Answer a refused proxied request; a 403 names its rule in the log
    /// line (never the credential).
    pub(super) async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        refusal: identity::Refusal,
    ) -> Result<bool> {
        ctx.rule = Some(refusal.rule());
        match refusal {
            identity::Refusal::Deny { error, rule } => {
                if error.status() == 403 {
                    tracing::info!(request_id = %ctx.request_id, rule, "request refused");
                    self.auth.metrics.route_denial(rule);
                }
                self.respond_error(session, ctx, error).await
            }
            identity::Refusal::SignIn { location } => {
                // A browser goes to the portal, to come back here.
                let resp = ApiResponse {
                    status: 302,
                    headers: vec![
                        ("location", location),
                        ("content-type", "text/plain; charset=utf-8".into()),
                    ],
                    body: Bytes::from_static(b"Sign in to continue.\n"),
                };
                self.respond(session, ctx, resp).await?;
                Ok(true)
            }
        }
    }
}
