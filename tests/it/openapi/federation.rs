//! The sign-in operations of CONTRACT 8.1 in the OpenAPI walk
//! (`every_operation_answers_as_documented`), against the real npm
//! `oidc-provider`.

use portcullis::clock::Clock;
use serde_json::json;

use super::{send, Spec};
use crate::common::http::{self, Response};
use crate::common::idp::{self, Idp};
use crate::common::TestGateway;

pub(super) const FED_CLIENT: &str = "portcullis";
pub(super) const FED_SECRET_ENV: &str = "PORTCULLIS_IDP_CORP_SECRET";
pub(super) const FED_SECRET: &str = "the walk's client secret";

/// The `Set-Cookie` values of `r` as a `Cookie` header.
fn fed_cookies(r: &Response) -> String {
    r.headers_all("set-cookie")
        .into_iter()
        .filter_map(|c| c.split(';').next())
        .filter(|kv| kv.split_once('=').is_some_and(|(_, v)| !v.is_empty()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `GET` with headers, checked against the document as `template`.
async fn fed_get(
    gw: &TestGateway,
    spec: &mut Spec,
    path: &str,
    template: &str,
    cookie: Option<&str>,
) -> Response {
    let mut h = vec![];
    if let Some(c) = cookie.filter(|c| !c.is_empty()) {
        h.push(("cookie", c));
    }
    let r = http::request(gw.addr, "GET", path, &h, None).await.unwrap();
    spec.check("GET", template, &r);
    r
}

/// The sign-in operations (CONTRACT 8.1) against the real provider: a
/// code-mode sign-in, its exchange, linking and unlinking, back-channel
/// logout, and their refusals.
pub(super) async fn federation_cases(gw: &TestGateway, idp: &Idp, spec: &mut Spec) {
    let start = "/auth/oidc/{id}/start";
    let callback = "/auth/oidc/{id}/callback";
    for (path, status) in [
        ("/auth/oidc/nope/start?rd=%2F&mode=code", 404),
        (
            "/auth/oidc/corp/start?rd=https%3A%2F%2Fevil.example%2F&mode=code",
            400,
        ),
        ("/auth/oidc/corp/start?rd=%2F", 400),
    ] {
        let r = fed_get(gw, spec, path, start, None).await;
        assert_eq!(r.status, status, "{path}: {r:?}");
    }
    let r = fed_get(
        gw,
        spec,
        "/auth/oidc/corp/start?rd=%2Fa&mode=code",
        start,
        None,
    )
    .await;
    assert_eq!(r.status, 302, "{r:?}");
    let cookies = fed_cookies(&r);
    let cb = idp
        .complete_login(r.header("location").unwrap(), "walk")
        .await;
    let cb_path = idp::path_and_query(&cb);
    // Another browser (no state cookie): refused.
    let r = fed_get(gw, spec, &cb_path, callback, None).await;
    assert_eq!(r.status, 400, "{r:?}");
    let r = fed_get(gw, spec, &cb_path, callback, Some(&cookies)).await;
    assert_eq!(r.status, 302, "{r:?}");
    let loc = url::Url::parse("https://gateway.test")
        .unwrap()
        .join(r.header("location").unwrap())
        .unwrap();
    let code = loc
        .query_pairs()
        .find(|(k, _)| k == "login_code")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no login_code: {loc}"));
    let r = fed_get(gw, spec, "/auth/oidc/nope/callback?state=x", callback, None).await;
    assert_eq!(r.status, 404, "{r:?}");

    let exchange = json!({ "login_code": code });
    let r = send(
        gw,
        "POST",
        "/auth/oidc/exchange",
        Some(exchange.clone()),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    spec.check("POST", "/auth/oidc/exchange", &r);
    let access = r.json()["access_token"].as_str().unwrap().to_string();
    for body in [exchange, json!({})] {
        let r = send(gw, "POST", "/auth/oidc/exchange", Some(body), None).await;
        assert_eq!(r.status, 400, "{r:?}");
        spec.check("POST", "/auth/oidc/exchange", &r);
    }

    let r = send(gw, "GET", "/auth/identities", None, Some(&access)).await;
    assert_eq!(r.status, 200, "{r:?}");
    spec.check("GET", "/auth/identities", &r);
    assert_eq!(r.json()["identities"][0]["provider"], "corp", "{r:?}");
    let linked = "/auth/identities/{provider}";
    // The account made by that sign-in has no other way in.
    let r = send(gw, "DELETE", "/auth/identities/corp", None, Some(&access)).await;
    assert_eq!(r.status, 409, "{r:?}");
    spec.check("DELETE", linked, &r);
    let r = send(gw, "POST", "/auth/identities/nope", None, Some(&access)).await;
    assert_eq!(r.status, 404, "{r:?}");
    spec.check("POST", linked, &r);

    // A local account links an identity and unlinks it.
    let local = gw.signup("fed-walker@example.com").await;
    let r = send(
        gw,
        "POST",
        "/auth/identities/corp?rd=%2Fa",
        None,
        Some(&local.access),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    spec.check("POST", linked, &r);
    let cookies = fed_cookies(&r);
    let cb = idp
        .complete_login(r.json()["authorize_url"].as_str().unwrap(), "walk2")
        .await;
    let r = fed_get(
        gw,
        spec,
        &idp::path_and_query(&cb),
        callback,
        Some(&cookies),
    )
    .await;
    assert_eq!(r.status, 302, "linked: {r:?}");
    for status in [204, 404] {
        let r = send(
            gw,
            "DELETE",
            "/auth/identities/corp",
            None,
            Some(&local.access),
        )
        .await;
        assert_eq!(r.status, status, "{r:?}");
        spec.check("DELETE", linked, &r);
    }

    // Back-channel logout: the provider's signed logout_token, once.
    let now = gw.clock.now();
    let claims = json!({
        "iss": idp.issuer, "aud": FED_CLIENT, "iat": now, "exp": now + 120,
        "jti": "walk-logout-1", "sub": "walk",
        "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
    });
    let token = idp
        .sign(claims, json!({ "typ": "logout+jwt" }), "provider")
        .await;
    let bcl = "/auth/oidc/{id}/backchannel-logout";
    let form = format!("logout_token={token}");
    for (path, body, status) in [
        ("/auth/oidc/corp/backchannel-logout", form.as_str(), 200),
        ("/auth/oidc/corp/backchannel-logout", form.as_str(), 400),
        ("/auth/oidc/corp/backchannel-logout", "logout_token=", 400),
        ("/auth/oidc/nope/backchannel-logout", form.as_str(), 404),
    ] {
        let r = http::request(
            gw.addr,
            "POST",
            path,
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(body.as_bytes()),
        )
        .await
        .unwrap();
        assert_eq!(r.status, status, "{path} {body:.20}: {r:?}");
        spec.check("POST", bcl, &r);
    }
    // The session that sign-in started is over.
    let r = send(gw, "GET", "/auth/identities", None, Some(&access)).await;
    assert_eq!(r.status, 401, "{r:?}");
}
