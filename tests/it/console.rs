//! The admin console (CONTRACT 8.5) on the real gateway, over sockets: who
//! may see it (the role, a second factor), the portal's CSRF and Origin
//! checks on its POSTs, every action's effect on the running gateway (the
//! same operations as the CLI and the admin API), the paged search over
//! many users, and user agents read as a person would.

use std::time::Duration;

use portcullis::clock::Clock;
use serde_json::json;

use crate::browser::{browse, builder, csrf, form, portal_login, post_form};
use crate::common::http::{self, Response};
use crate::common::totp::{base32_decode, code_at};
use crate::common::*;

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";

/// The portal with the console on, a mail receiver, and a route API keys
/// with scope `read` pass.
pub fn console_builder(require_mfa: bool) -> Builder {
    let mut b = builder();
    b.extra.push_str(&format!(
        "\n[admin_console]\nenabled = true\nrequire_mfa = {require_mfa}\n"
    ));
    b.routes.push_str(
        "\n[[routes]]\nprefix = \"/read\"\nupstream = \"{UP}\"\nauth = \"required\"\nscopes = [\"read\"]\n",
    );
    b.with_smtp = true;
    b
}

/// Turn TOTP on for a signed-in user; returns the secret.
async fn enrol_totp(gw: &TestGateway, access: &str) -> Vec<u8> {
    let r = gw
        .post("/auth/mfa/totp/enroll", json!({}), Some(access))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let secret = base32_decode(r.json()["secret"].as_str().unwrap());
    let code = code_at(&secret, gw.clock.now());
    let r = gw
        .post(
            "/auth/mfa/totp/confirm",
            json!({ "code": code }),
            Some(access),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    // The next code must be for a later step (no replay).
    gw.clock.advance(30);
    secret
}

/// An administrator signed in on the portal with password and TOTP; the
/// session cookie.
pub async fn admin_with_mfa(gw: &TestGateway, email: &str) -> String {
    admin_with_role(gw, email, "admin").await
}

/// [`admin_with_mfa`] with another role.
pub async fn admin_with_role(gw: &TestGateway, email: &str, role: &str) -> String {
    gw.admin_add_user(email, &[role]).await;
    let s = gw.signin(email, PASSWORD).await;
    let secret = enrol_totp(gw, &s.access).await;
    let r = post_form(
        gw,
        "/auth/ui/login",
        &[
            ("email", email),
            ("password", PASSWORD),
            ("rd", "/auth/ui/admin/"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "the code page: {r:?}");
    let page = r.text();
    let token = page
        .split(r#"name="mfa_token" value=""#)
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the mfa_token field")
        .to_string();
    let code = code_at(&secret, gw.clock.now());
    let r = post_form(
        gw,
        "/auth/ui/mfa",
        &[
            ("mfa_token", &token),
            ("code", &code),
            ("rd", "/auth/ui/admin/"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 303, "{r:?}");
    crate::browser::set_cookie(&r, "__Host-portcullis")
        .expect("the session cookie")
        .to_string()
}

/// A console action with the right token and Origin.
async fn act(gw: &TestGateway, cookie: &str, pairs: &[(&str, &str)]) -> Response {
    post_form(gw, "/auth/ui/admin/action", pairs, Some(cookie)).await
}

/// A console action that succeeds: its redirect, and the page it leads
/// to, which confirms the result.
async fn act_ok(gw: &TestGateway, cookie: &str, id: &str, pairs: &[(&str, &str)]) -> String {
    let mut all = vec![("id", id)];
    all.extend_from_slice(pairs);
    let r = act(gw, cookie, &all).await;
    assert_eq!(r.status, 303, "{pairs:?}: {r:?}");
    let to = r.header("location").unwrap().to_string();
    let action = pairs.iter().find(|(k, _)| *k == "action").unwrap().1;
    assert_eq!(to, format!("/auth/ui/admin/user?id={id}&done={action}"));
    let page = browse(gw, &to, cookie).await;
    assert_eq!(page.status, 200, "{page:?}");
    let text = page.text();
    assert!(text.contains(r#"id="done""#), "the result is shown: {text}");
    text
}

fn user_id(s: &Session) -> String {
    s.user["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_with_a_second_factor_see_the_console() {
    let gw = TestGateway::start_with(console_builder(true)).await;
    let victim = gw.signup("victim@example.com").await;

    // Not signed in: to the sign-in page, and back here after it.
    let r = http::request(
        gw.addr,
        "GET",
        "/auth/ui/admin/?q=vic",
        &[("accept", "text/html")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some("/auth/ui/login?rd=%2Fauth%2Fui%2Fadmin%2F%3Fq%3Dvic")
    );

    // A user without the role: a 403 page without anyone's data, and an
    // action of theirs changes nothing.
    gw.signup("plain@example.com").await;
    let plain = portal_login(&gw, "plain@example.com", "/").await;
    for path in [
        "/auth/ui/admin/",
        "/auth/ui/admin/?q=",
        &format!("/auth/ui/admin/user?id={}", user_id(&victim)),
    ] {
        let r = browse(&gw, path, &plain).await;
        assert_eq!(r.status, 403, "{path}: {r:?}");
        assert!(r.text().contains("may not use the admin console"), "{r:?}");
        assert!(!r.text().contains("victim@example.com"), "{r:?}");
        assert_eq!(
            r.header("content-security-policy"),
            Some(portcullis::portal::CSP)
        );
    }
    let id = user_id(&victim);
    let r = act(&gw, &plain, &[("id", &id), ("action", "disable")]).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(gw.get("/app/x", Some(&victim.access)).await.status, 200);

    // The role, but a password-only sign-in: the page asks for a second
    // factor, and an action is refused.
    gw.admin_add_user("pwonly@example.com", &["admin"]).await;
    let pwonly = portal_login(&gw, "pwonly@example.com", "/").await;
    let r = browse(&gw, "/auth/ui/admin/?q=v", &pwonly).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.text().contains("needs a sign-in with a second factor"),
        "{r:?}"
    );
    assert!(!r.text().contains("victim@example.com"));
    let r = act(&gw, &pwonly, &[("id", &id), ("action", "disable")]).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(gw.get("/app/x", Some(&victim.access)).await.status, 200);

    // With the second factor: the console.
    let admin = admin_with_mfa(&gw, "boss@example.com").await;
    let r = browse(&gw, "/auth/ui/admin/?q=vic", &admin).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.text().contains("victim@example.com"), "{r:?}");
    assert!(
        !r.text().contains("plain@example.com"),
        "only the prefix's matches"
    );
    assert_eq!(
        r.header("content-security-policy"),
        Some(portcullis::portal::CSP)
    );
    assert!(!r.text().contains("<script>"), "no inline script");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_require_mfa_the_role_is_enough_and_a_gateway_without_the_console_has_none() {
    let gw = TestGateway::start_with(console_builder(false)).await;
    gw.admin_add_user("pw-admin@example.com", &["admin"]).await;
    let c = portal_login(&gw, "pw-admin@example.com", "/").await;
    let r = browse(&gw, "/auth/ui/admin/?q=pw", &c).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.text().contains("pw-admin@example.com"));
    drop(gw);

    let gw = TestGateway::start_with(builder()).await;
    gw.admin_add_user("off@example.com", &["admin"]).await;
    let c = portal_login(&gw, "off@example.com", "/").await;
    let r = browse(&gw, "/auth/ui/admin/", &c).await;
    assert_eq!(r.status, 404, "{r:?}");
}

/// A console POST as sent, with the cookies and Origin given.
async fn raw_post(gw: &TestGateway, cookies: &str, origin: Option<&str>, body: &str) -> Response {
    let mut headers = vec![
        ("content-type", "application/x-www-form-urlencoded"),
        ("cookie", cookies),
        ("accept", "text/html"),
    ];
    if let Some(o) = origin {
        headers.push(("origin", o));
    }
    http::request(
        gw.addr,
        "POST",
        "/auth/ui/admin/action",
        &headers,
        Some(body.as_bytes()),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_posts_need_the_csrf_token_and_the_origin() {
    let gw = TestGateway::start_with(console_builder(true)).await;
    let victim = gw.signup("target@example.com").await;
    let id = user_id(&victim);
    let admin = admin_with_mfa(&gw, "csrf-admin@example.com").await;
    let (csrf_cookie, token) = csrf(&gw, "/auth/ui/login").await;
    let cookies = format!("{csrf_cookie}; __Host-portcullis={admin}");
    let own = format!("http://{}", gw.addr);
    let good = form(&[("csrf", &token), ("id", &id), ("action", "disable")]);
    let no_token = form(&[("id", &id), ("action", "disable")]);
    let wrong = form(&[
        ("csrf", &"x".repeat(43)),
        ("id", &id),
        ("action", "disable"),
    ]);
    let refused = [
        ("no token", cookies.clone(), Some(own.as_str()), no_token),
        ("wrong token", cookies.clone(), Some(own.as_str()), wrong),
        ("no Origin", cookies.clone(), None, good.clone()),
        (
            "another Origin",
            cookies.clone(),
            Some("https://evil.example"),
            good.clone(),
        ),
        (
            "no CSRF cookie",
            format!("__Host-portcullis={admin}"),
            Some(own.as_str()),
            good.clone(),
        ),
    ];
    for (what, cookies, origin, body) in refused {
        let r = raw_post(&gw, &cookies, origin, &body).await;
        assert_eq!(r.status, 403, "{what}: {r:?}");
        assert!(r.text().contains("Request refused"), "{what}: {r:?}");
        assert_eq!(
            gw.get("/app/x", Some(&victim.access)).await.status,
            200,
            "{what}: nothing was done"
        );
    }
    let r = raw_post(&gw, &cookies, Some(&own), &good).await;
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(gw.get("/app/x", Some(&victim.access)).await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_takes_effect_on_the_gateway() {
    let gw = TestGateway::start_with(console_builder(true)).await;
    let admin = admin_with_mfa(&gw, "root@example.com").await;
    let r = gw.register("user@example.com", PASSWORD).await;
    assert_eq!(r.status, 201, "{r:?}");
    let s = gw.signin("user@example.com", PASSWORD).await;
    let id = user_id(&s);

    // Disable: the bearer is refused at once, a sign-in too.
    let page = act_ok(&gw, &admin, &id, &[("action", "disable")]).await;
    assert!(page.contains(r#"<dd id="state">disabled</dd>"#), "{page}");
    assert_eq!(gw.get("/app/x", Some(&s.access)).await.status, 401);
    assert_eq!(gw.login("user@example.com", PASSWORD).await.status, 401);
    // Enable: signing in works again.
    let page = act_ok(&gw, &admin, &id, &[("action", "enable")]).await;
    assert!(page.contains(r#"<dd id="state">active</dd>"#), "{page}");
    // The user page lists the user's stored audit events, the disable
    // among them, naming the acting admin (not the user).
    assert!(page.contains(r#"<table id="events">"#), "{page}");
    let disabled = page
        .lines()
        .find(|l| l.contains("<td>user.disabled</td>"))
        .unwrap_or_else(|| panic!("no user.disabled event: {page}"));
    assert!(disabled.contains("<td>by "), "{disabled}");
    assert!(!disabled.contains(&format!("by {id}")), "{disabled}");
    let s = gw.signin("user@example.com", PASSWORD).await;
    assert_eq!(gw.get("/app/x", Some(&s.access)).await.status, 200);

    // A role: in the next token; removed: the old token ends, the next
    // token lacks it.
    let page = act_ok(&gw, &admin, &id, &[("action", "role_add"), ("role", "ops")]).await;
    assert!(page.contains("<li>ops "), "{page}");
    let with_role = gw.signin("user@example.com", PASSWORD).await;
    assert_eq!(with_role.user["roles"], json!(["ops"]));
    assert_eq!(gw.get("/ops/x", Some(&with_role.access)).await.status, 200);
    act_ok(
        &gw,
        &admin,
        &id,
        &[("action", "role_remove"), ("role", "ops")],
    )
    .await;
    assert_eq!(gw.get("/ops/x", Some(&with_role.access)).await.status, 401);
    let without = gw.signin("user@example.com", PASSWORD).await;
    assert_eq!(without.user["roles"], json!([]));
    assert_eq!(gw.get("/ops/x", Some(&without.access)).await.status, 403);
    // A bad role name is refused on the page, and nothing changes.
    let r = act(
        &gw,
        &admin,
        &[("id", &id), ("action", "role_add"), ("role", "a b")],
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.text().contains("Invalid role"), "{r:?}");

    // End sessions: the access token and the refresh token stop.
    act_ok(&gw, &admin, &id, &[("action", "sessions_end")]).await;
    assert_eq!(gw.get("/app/x", Some(&without.access)).await.status, 401);
    let r = gw
        .post(
            "/auth/refresh",
            json!({ "refresh_token": without.refresh }),
            None,
        )
        .await;
    assert_eq!(r.status, 401, "{r:?}");

    // An API key: listed, then revoked: refused at once.
    let s = gw.signin("user@example.com", PASSWORD).await;
    let r = gw
        .post(
            "/auth/api-keys",
            json!({ "name": "deploy", "scopes": ["read"] }),
            Some(&s.access),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let key = r.json()["key"].as_str().unwrap().to_string();
    let key_id = r.json()["id"].as_str().unwrap().to_string();
    let addr = gw.addr;
    let keyed = |k: String| async move {
        http::request(addr, "GET", "/read/x", &[("x-api-key", &k)], None)
            .await
            .unwrap()
            .status
    };
    assert_eq!(keyed(key.clone()).await, 200);
    let page = browse(&gw, &format!("/auth/ui/admin/user?id={id}"), &admin).await;
    assert!(page.text().contains("<td>deploy</td>"), "{page:?}");
    act_ok(
        &gw,
        &admin,
        &id,
        &[("action", "key_revoke"), ("key", &key_id)],
    )
    .await;
    assert_eq!(keyed(key).await, 401);

    // TOTP off: the next sign-in needs no code.
    enrol_totp(&gw, &s.access).await;
    let r = gw.login("user@example.com", PASSWORD).await;
    assert_eq!(r.json()["mfa_required"], true, "{r:?}");
    let page = browse(&gw, &format!("/auth/ui/admin/user?id={id}"), &admin).await;
    assert!(page.text().contains(r#"<dd id="totp">on</dd>"#));
    let page = act_ok(&gw, &admin, &id, &[("action", "totp_off")]).await;
    assert!(page.contains(r#"<dd id="totp">off</dd>"#), "{page}");
    let r = gw.login("user@example.com", PASSWORD).await;
    assert!(r.json()["access_token"].is_string(), "{r:?}");

    // A reset link reaches the user's inbox and works.
    gw.smtp().clear();
    act_ok(&gw, &admin, &id, &[("action", "reset_send")]).await;
    let mail = gw
        .smtp()
        .wait_for_match(Duration::from_secs(10), |m| {
            m.to == ["user@example.com"] && m.token_from_link("reset").is_some()
        })
        .await;
    let token = mail.token_from_link("reset").unwrap();
    let r = gw
        .post(
            "/auth/password/reset/confirm",
            json!({ "token": token, "new_password": "a whole new passphrase", "new_password_confirm": "a whole new passphrase" }),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(
        gw.login("user@example.com", "a whole new passphrase")
            .await
            .status,
        200
    );

    // An administrator cannot lock themselves out from here.
    let r = browse(&gw, "/auth/ui/admin/?q=root", &admin).await;
    let me = r
        .text()
        .split("/auth/ui/admin/user?id=")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the admin's own row")
        .to_string();
    for pairs in [
        [("action", "disable"), ("role", "")],
        [("action", "role_remove"), ("role", "admin")],
    ] {
        let mut all = vec![("id", me.as_str())];
        all.extend_from_slice(&pairs);
        let r = act(&gw, &admin, &all).await;
        assert_eq!(r.status, 400, "{r:?}");
        assert!(r.text().contains("lock yourself out"), "{r:?}");
    }
    assert_eq!(browse(&gw, "/auth/ui/admin/", &admin).await.status, 200);
}

/// The rows of a search page: (email, href), and the next page's link.
fn rows(page: &str) -> (Vec<String>, Option<String>) {
    let emails = page
        .split(r#"<a href="/auth/ui/admin/user?id="#)
        .skip(1)
        .map(|s| {
            let after = s.split_once("\">").unwrap().1;
            after.split("</a>").next().unwrap().to_string()
        })
        .collect();
    let next = page
        .split(r#"<a id="next" href=""#)
        .nth(1)
        .and_then(|s| s.split('"').next())
        // askama escapes `&` as a numeric entity.
        .map(|h| h.replace("&#38;", "&").replace("&amp;", "&"));
    (emails, next)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_pages_through_many_users_by_email_prefix() {
    let gw = TestGateway::start_with(console_builder(true)).await;
    let admin = admin_with_mfa(&gw, "pager@example.com").await;
    let mut want = Vec::new();
    for i in 0..45 {
        let e = format!("many{i:02}@example.com");
        gw.admin_add_user(&e, &[]).await;
        want.push(e);
    }
    gw.admin_add_user("manx@example.com", &[]).await;
    gw.admin_add_user("other@example.com", &[]).await;
    let mut got = Vec::new();
    let mut next = Some("/auth/ui/admin/?q=MANY".to_string());
    let mut pages = 0;
    while let Some(path) = next.take() {
        let r = browse(&gw, &path, &admin).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let (emails, n) = rows(&r.text());
        assert!(emails.len() <= 20, "{emails:?}");
        got.extend(emails);
        next = n;
        pages += 1;
        assert!(pages <= 3, "more pages than 45 users make: {got:?}");
    }
    assert_eq!(pages, 3);
    assert_eq!(got, want, "every match once, in email order");
    // A prefix nobody has.
    let r = browse(&gw, "/auth/ui/admin/?q=nobody", &admin).await;
    assert_eq!(rows(&r.text()).0, Vec::<String>::new());
    assert!(r.text().contains("No user's email starts with that."));
    // An id that names no one, and one that is no id.
    for id in [uuid::Uuid::new_v4().to_string(), "x".into()] {
        let r = browse(&gw, &format!("/auth/ui/admin/user?id={id}"), &admin).await;
        assert_eq!(r.status, 404, "{r:?}");
        assert!(r.text().contains("No such user."));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_agents_read_as_a_person_would() {
    let gw = TestGateway::start_with(console_builder(true)).await;
    let admin = admin_with_mfa(&gw, "ua-admin@example.com").await;
    let s = gw.signup("ua@example.com").await;
    let body = json!({ "email": "ua@example.com", "password": PASSWORD }).to_string();
    let r = http::request(
        gw.addr,
        "POST",
        "/auth/login",
        &[
            ("content-type", "application/json"),
            ("user-agent", FIREFOX),
        ],
        Some(body.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let page = browse(
        &gw,
        &format!("/auth/ui/admin/user?id={}", user_id(&s)),
        &admin,
    )
    .await
    .text();
    assert!(
        page.contains(&format!(
            r#"<td title="{FIREFOX}">Firefox 133 on Linux</td>"#
        )),
        "{page}"
    );
    // The user's own sessions page reads it the same way.
    let own = portal_login(&gw, "ua@example.com", "/").await;
    let page = browse(&gw, "/auth/ui/sessions", &own).await.text();
    assert!(page.contains("<td>Firefox 133 on Linux</td>"), "{page}");
    assert!(!page.contains("Gecko/20100101"), "{page}");
}

/// Every `portcullis_*` name in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("portcullis_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// Every PromQL expression of a dashboard (panels, rows, variables).
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

/// The Grafana dashboard in `deploy/grafana/` queries only metrics the
/// gateway exports: those on a fresh gateway's `/metrics`, plus those the
/// README's metric list documents that appear only after their first use
/// (a histogram or a counter by route, the webhook metrics).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_only_metrics_the_gateway_exports() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dash: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join("deploy/grafana/portcullis.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    let panels = dash["panels"].as_array().unwrap();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().map(Vec::len).unwrap_or(0);
        assert!(targets > 0, "a panel without a query: {}", p["title"]);
    }
    let queried = metric_names(&all.join("\n"));
    assert!(queried.len() >= 10, "{queried:?}");

    let gw = TestGateway::start().await;
    let scraped: std::collections::BTreeSet<String> = gw
        .metrics()
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(
        scraped.contains("portcullis_token_checks_total"),
        "{scraped:?}"
    );
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let start = readme
        .find("\n## Metrics\n")
        .expect("the README's metric list");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let documented = metric_names(section);

    let family = |n: &str| -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = n.strip_suffix(suffix) {
                if scraped.contains(base) || documented.contains(base) {
                    return base.to_string();
                }
            }
        }
        n.to_string()
    };
    let unknown: Vec<String> = queried
        .iter()
        .map(|n| family(n))
        .filter(|f| !scraped.contains(f) && !documented.contains(f))
        .collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics the gateway does not export: {unknown:?}"
    );
    // What the dashboard is for (issue 25).
    for needed in [
        "portcullis_auth_events_total",
        "portcullis_throttled_total",
        "portcullis_token_checks_total",
        "portcullis_upstream_duration_seconds_bucket",
        "portcullis_emails_pending",
        "portcullis_webhook_backlog",
        "portcullis_webhook_deliveries_total",
    ] {
        assert!(queried.contains(needed), "no panel shows {needed}");
    }
}

/// The console in a real Chromium (tests/browser/console_e2e.py): the
/// administrator signs in with password and TOTP, finds the user, reads
/// their session's browser as "Firefox 133 on Linux", and runs every
/// action; each shows its result, and each took effect here. Screenshots
/// go to `$PORTCULLIS_SCREENSHOTS` (the README's are in docs/screenshots).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chromium_runs_the_console() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    let py = tokio::task::spawn_blocking(crate::browser::selenium_python)
        .await
        .unwrap();
    let mut b = console_builder(true);
    b.link_base_url = "https://localhost:{TLS_PORT}".into();
    let gw = TestGateway::start_with(b).await;
    let (admin, user) = ("chief@example.com", "alice@example.com");
    gw.admin_add_user(admin, &["admin"]).await;
    let a = gw.signin(admin, PASSWORD).await;
    let secret = enrol_totp(&gw, &a.access).await;

    let r = gw.register(user, PASSWORD).await;
    assert_eq!(r.status, 201, "{r:?}");
    let body = json!({ "email": user, "password": PASSWORD }).to_string();
    let r = http::request(
        gw.addr,
        "POST",
        "/auth/login",
        &[
            ("content-type", "application/json"),
            ("user-agent", FIREFOX),
        ],
        Some(body.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let access = r.json()["access_token"].as_str().unwrap().to_string();
    let r = gw
        .post(
            "/auth/api-keys",
            json!({ "name": "deploy", "scopes": ["read"] }),
            Some(&access),
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let key = r.json()["key"].as_str().unwrap().to_string();
    enrol_totp(&gw, &access).await;

    let shots = std::env::var("PORTCULLIS_SCREENSHOTS")
        .unwrap_or_else(|_| format!("{}/screenshots", env!("CARGO_TARGET_TMPDIR")));
    let cfg = json!({
        "gateway": format!("https://localhost:{}", gw.tls_addr.port()),
        "admin": admin,
        "user": user,
        "password": PASSWORD,
        "screenshots": shots,
        "metrics": format!("http://{}/metrics", gw.admin_addr),
        "dashboard": concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/portcullis.json"),
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/console_e2e.py");
    let mut child = Command::new(&py)
        .arg(script)
        .arg(cfg.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the browser test");
    let err = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut { err }, &mut s);
        s
    });
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut log = Vec::new();
    tokio::task::block_in_place(|| {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            let answer = if line == "TOTP" {
                Some(format!("OK {}", code_at(&secret, gw.clock.now())))
            } else if let Some(rest) = line.strip_prefix("MAILTOKEN ") {
                let (to, link) = rest.split_once(' ').unwrap();
                let deadline = std::time::Instant::now() + Duration::from_secs(15);
                let token = loop {
                    let found = gw
                        .smtp()
                        .messages()
                        .iter()
                        .rev()
                        .filter(|m| m.to.iter().any(|t| t.contains(to)))
                        .find_map(|m| m.token_from_link(link));
                    if let Some(t) = found {
                        break t;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no mail to {to} with {link}"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                };
                Some(format!("OK {token}"))
            } else {
                None
            };
            if let Some(a) = answer {
                writeln!(stdin, "{a}").unwrap();
                stdin.flush().unwrap();
            }
            log.push(line);
        }
    });
    let status = child.wait().unwrap();
    let stderr = stderr.join().unwrap_or_default();
    assert!(
        status.success() && log.last().map(String::as_str) == Some("PASSED"),
        "the console browser test failed ({status}):\n{}\n{stderr}",
        log.join("\n")
    );
    // What the clicks did, on the gateway: the session ended, the key is
    // revoked, TOTP is off, the role is in the next token.
    assert_eq!(gw.get("/app/x", Some(&access)).await.status, 401);
    let r = http::request(gw.addr, "GET", "/read/x", &[("x-api-key", &key)], None)
        .await
        .unwrap();
    assert_eq!(r.status, 401, "{r:?}");
    let s = gw.signin(user, PASSWORD).await;
    assert_eq!(s.user["roles"], json!(["ops"]));
}

mod identities;
