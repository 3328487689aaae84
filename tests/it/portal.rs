//! The portal's pages on the real gateway (issue 21: templates that escape
//! by construction): every value a page echoes from a request (an email,
//! `rd`, a token, a client's user agent) comes back as text, never as
//! markup; the mailed-link page of a gateway without the portal runs only
//! its own script, allowed by hash.

use base64::Engine as _;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::browser::{browse, builder, portal_login, post_form};
use crate::common::http::{self, Response};
use crate::common::*;

/// Breaks out of a double- or single-quoted attribute and of text; no
/// spaces, so it is also a path `rd` accepts.
const HOSTILE: &str = r#""'><script>alert(1)</script><img/src=x/onerror=alert(2)>"#;

/// `page` shows `HOSTILE` (it was echoed) and only as text.
fn assert_escaped(what: &str, r: &Response) {
    let page = r.text();
    assert!(
        page.contains("alert(1)") && page.contains("alert(2)"),
        "{what}: the value was not echoed at all, so this proves nothing: {page}"
    );
    for raw in ["<script>", "<img", r#""'>"#, "'><"] {
        assert!(!page.contains(raw), "{what}: {raw} unescaped in {page}");
    }
}

async fn get_page(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut all = vec![("accept", "text/html")];
    all.extend_from_slice(headers);
    http::request(gw.addr, "GET", path, &all, None)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_portal_page_echoes_hostile_input_as_text() {
    let gw = TestGateway::start_with(builder()).await;
    gw.signup("esc@example.com").await;
    let rd = format!("/app/{HOSTILE}");
    let email = format!("{HOSTILE}@example.com");

    // rd carried on by the sign-in page (a safe path, quotes and all).
    let r = get_page(&gw, &format!("/auth/ui/login?rd={}", enc(&rd)), &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_escaped("login rd", &r);
    // A refused sign-in shows the address and rd again.
    let login = [
        ("email", email.as_str()),
        ("password", "wrong password!"),
        ("rd", &rd),
    ];
    let r = post_form(&gw, "/auth/ui/login", &login, None).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_escaped("login refused", &r);
    assert!(r.text().contains("The email or password is incorrect."));
    // A refused sign-up shows the address.
    let signup = [
        ("email", email.as_str()),
        ("password", PASSWORD),
        ("password_confirm", PASSWORD),
    ];
    let r = post_form(&gw, "/auth/ui/register", &signup, None).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_escaped("register refused", &r);
    // Link tokens, from the query and from a refused form.
    for path in ["/auth/ui/reset", "/auth/ui/verify"] {
        let r = get_page(&gw, &format!("{path}?token={}", enc(HOSTILE)), &[]).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_escaped(path, &r);
    }
    let reset = [
        ("token", HOSTILE),
        ("new_password", PASSWORD),
        ("new_password_confirm", PASSWORD),
    ];
    let r = post_form(&gw, "/auth/ui/reset", &reset, None).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_escaped("reset refused", &r);

    // A session started by a client with a hostile User-Agent, listed on
    // the sessions page of another session of the same user.
    let body = json!({ "email": "esc@example.com", "password": PASSWORD }).to_string();
    let r = http::request(
        gw.addr,
        "POST",
        "/auth/login",
        &[
            ("content-type", "application/json"),
            ("user-agent", HOSTILE),
        ],
        Some(body.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let cookie = portal_login(&gw, "esc@example.com", "/").await;
    let r = browse(&gw, "/auth/ui/sessions", &cookie).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_escaped("sessions", &r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_factor_page_carries_a_hostile_rd_as_text() {
    use crate::common::totp::{base32_decode, code_at};
    use portcullis::clock::Clock;
    let gw = TestGateway::start_with(builder()).await;
    let s = gw.signup("esc-totp@example.com").await;
    let r = gw
        .post("/auth/mfa/totp/enroll", json!({}), Some(&s.access))
        .await;
    let secret = base32_decode(r.json()["secret"].as_str().unwrap());
    let code = code_at(&secret, gw.clock.now());
    let r = gw
        .post(
            "/auth/mfa/totp/confirm",
            json!({ "code": code }),
            Some(&s.access),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let rd = format!("/app/{HOSTILE}");
    let form = [
        ("email", "esc-totp@example.com"),
        ("password", PASSWORD),
        ("rd", &rd),
    ];
    let r = post_form(&gw, "/auth/ui/login", &form, None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.text().contains(r#"name="mfa_token""#), "the second step");
    assert_escaped("mfa", &r);
}

/// Without the portal, a mailed link opens a page whose one inline script
/// is allowed by its hash: no 'unsafe-inline' for script or style.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mailed_link_page_allows_only_its_own_script() {
    let gw = TestGateway::start().await;
    for path in ["/auth/email/verify", "/auth/password/reset"] {
        let r = get_page(&gw, &format!("{path}?token={}", enc(HOSTILE)), &[]).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let csp = r.header("content-security-policy").unwrap();
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        let page = r.text();
        assert!(!page.contains("alert(1)"), "the query is never reflected");
        let scripts: Vec<&str> = page.split("<script>").skip(1).collect();
        assert_eq!(scripts.len(), 1, "{page}");
        let script = scripts[0].split("</script>").next().unwrap();
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script));
        assert!(
            csp.contains(&format!("script-src 'sha256-{hash}'")),
            "{path}: {csp}"
        );
        assert!(!page.contains(" style=") && !page.contains("<style"));
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    }
}
