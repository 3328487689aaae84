//! Sign in with an existing identity (issue 22, CONTRACT 8.1) against a real
//! outside OpenID Provider: the npm package `oidc-provider`, run by
//! `common::idp` (tests/idp/server.mjs). The first tests prove the harness
//! on its own (discovery, a complete login returning a code, the id_token
//! it gives, back-channel logout); the gateway's tests follow.

use serde_json::{json, Value};

use crate::common::idp::{self, account, client, Idp, IdpConfig};
use crate::common::*;

/// PKCE S256 challenge of a verifier.
fn s256(verifier: &str) -> String {
    use base64::Engine;
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

fn basic(id: &str, secret: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

/// Verify an RS256 JWT against the provider's published JWKS.
async fn verify_with_jwks(idp: &Idp, jwt: &str, aud: &str) -> Result<Value, String> {
    let jwks = http::get(idp.addr, "/jwks", None).await.json();
    let header = jsonwebtoken::decode_header(jwt).map_err(|e| e.to_string())?;
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"].as_str() == header.kid.as_deref())
        .ok_or("no key with that kid")?;
    let dk = jsonwebtoken::DecodingKey::from_rsa_components(
        key["n"].as_str().unwrap(),
        key["e"].as_str().unwrap(),
    )
    .map_err(|e| e.to_string())?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&[aud]);
    v.set_issuer(&[&idp.issuer]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    jsonwebtoken::decode::<Value>(jwt, &dk, &v)
        .map(|d| d.claims)
        .map_err(|e| e.to_string())
}

const RP_CALLBACK: &str = "https://rp.test/callback";

fn authorize_url(idp: &Idp, client_id: &str, state: &str, nonce: &str, verifier: &str) -> String {
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("client_id", client_id)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid email profile")
        .append_pair("redirect_uri", RP_CALLBACK)
        .append_pair("state", state)
        .append_pair("nonce", nonce)
        .append_pair("code_challenge", &s256(verifier))
        .append_pair("code_challenge_method", "S256")
        .finish();
    idp.url(&format!("/auth?{q}"))
}

async fn redeem(idp: &Idp, client_id: &str, secret: &str, code: &str, verifier: &str) -> Value {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", code)
        .append_pair("redirect_uri", RP_CALLBACK)
        .append_pair("code_verifier", verifier)
        .finish();
    let auth = basic(client_id, secret);
    let r = http::request(
        idp.addr,
        "POST",
        "/token",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &auth),
        ],
        Some(body.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "token endpoint: {r:?}");
    r.json()
}

/// The provider on its own: discovery, a complete login through its pages
/// returning a code (with `state` and the RFC 9207 `iss`), the code
/// redeemed for an id_token signed by a key of its JWKS with the account's
/// claims (email, email_verified, groups, amr with "mfa", sid), userinfo at
/// `/me` (the oauth2 variant's user URL), a second login in the same
/// browser without the login form, a denied consent, and the provider's
/// own sign-out POSTing a valid `logout_token` to the client's back-channel
/// URI. The test hooks: forged signatures do not verify, a tampered
/// id_token carries the changed claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_the_provider_logs_in_issues_codes_and_logs_out_on_its_own() {
    let receiver = upstream::start().await;
    let bcl = format!("{}/backchannel", receiver.url());
    let mut accounts = std::collections::BTreeMap::new();
    accounts.insert(
        "alice".to_string(),
        account(
            json!({ "email": "alice@example.com", "email_verified": true, "groups": ["eng", "ops"] }),
            &["pwd", "mfa"],
        ),
    );
    let idp = Idp::start(IdpConfig {
        accounts,
        clients: vec![client("rp", "rp-secret", &[RP_CALLBACK], Some(&bcl))],
        ..Default::default()
    })
    .await;
    // Discovery.
    let d = idp.discovery().await;
    assert_eq!(d["issuer"], idp.issuer);
    assert_eq!(d["authorization_endpoint"], idp.url("/auth"));
    assert_eq!(d["token_endpoint"], idp.url("/token"));
    assert_eq!(d["userinfo_endpoint"], idp.url("/me"));
    assert_eq!(d["backchannel_logout_supported"], true);
    assert_eq!(d["authorization_response_iss_parameter_supported"], true);
    assert!(d["code_challenge_methods_supported"]
        .as_array()
        .unwrap()
        .contains(&json!("S256")));

    // A complete login returns a code to the client's redirect URI.
    let verifier = "v".repeat(50);
    let start = authorize_url(&idp, "rp", "st-1", "n-1", &verifier);
    let cb = idp.complete_login(&start, "alice").await;
    assert!(cb.starts_with(&format!("{RP_CALLBACK}?")), "{cb}");
    let q = idp::query(&cb);
    assert_eq!(q["state"], "st-1");
    assert_eq!(q["iss"], idp.issuer);
    let code = q["code"].clone();
    assert!(!code.is_empty());

    let tokens = redeem(&idp, "rp", "rp-secret", &code, &verifier).await;
    let id_token = tokens["id_token"].as_str().unwrap();
    let claims = verify_with_jwks(&idp, id_token, "rp").await.unwrap();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["nonce"], "n-1");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["groups"], json!(["eng", "ops"]));
    assert_eq!(claims["amr"], json!(["pwd", "mfa"]));
    let sid = claims["sid"]
        .as_str()
        .expect("a sid for back-channel logout");
    // Userinfo, the oauth2 variant's user URL.
    let r = http::get(idp.addr, "/me", tokens["access_token"].as_str()).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["sub"], "alice");
    assert_eq!(r.json()["email"], "alice@example.com");
    // The same code twice: refused by the provider, and what it
    // issued is revoked (RFC 9700).
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", &code)
        .append_pair("redirect_uri", RP_CALLBACK)
        .append_pair("code_verifier", &verifier)
        .finish();
    let r = http::request(
        idp.addr,
        "POST",
        "/token",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &basic("rp", "rp-secret")),
        ],
        Some(body.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["error"], "invalid_grant");
    let r = http::get(idp.addr, "/me", tokens["access_token"].as_str()).await;
    assert_eq!(r.status, 401, "{r:?}");

    // A second login in the same browser: no login form, a new code.
    let start = authorize_url(&idp, "rp", "st-2", "n-2", &verifier);
    let cb2 = idp.continue_login(&start, "alice").await;
    let q2 = idp::query(&cb2);
    assert_eq!(q2["state"], "st-2");
    assert_ne!(q2["code"], code);

    // A denied consent comes back as access_denied.
    let start = authorize_url(&idp, "rp", "st-3", "n-3", &verifier);
    let denied = idp.deny_login(&start, "alice").await;
    let qd = idp::query(&denied);
    assert_eq!(qd["error"], "access_denied", "{denied}");
    assert_eq!(qd["state"], "st-3");

    // The provider's own sign-out POSTs a logout_token to the client.
    let events = idp.end_session("alice").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "backchannel.success", "{events:?}");
    assert_eq!(events[0]["client_id"], "rp");
    let posted = receiver.last_request().expect("the back-channel POST");
    assert_eq!(posted["method"], "POST");
    assert_eq!(posted["path"], "/backchannel");
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(posted["body"].as_str().unwrap().as_bytes())
            .into_owned()
            .collect();
    let logout = verify_with_jwks(&idp, &form["logout_token"], "rp")
        .await
        .unwrap();
    assert_eq!(logout["sub"], "alice");
    assert_eq!(logout["sid"], sid);
    assert!(logout["events"]["http://schemas.openid.net/event/backchannel-logout"].is_object());
    assert!(logout["jti"].is_string());
    assert!(logout.get("nonce").is_none());

    // Hooks: a token signed with the key the provider never published does
    // not verify (same kid); one signed with its key does.
    let payload = json!({ "iss": idp.issuer, "aud": "rp", "sub": "alice",
        "exp": 4_000_000_000u64, "iat": 1_700_000_000u64 });
    let forged = idp.sign(payload.clone(), json!({}), "other").await;
    assert!(verify_with_jwks(&idp, &forged, "rp").await.is_err());
    let good = idp
        .sign(payload, json!({ "typ": "logout+jwt" }), "provider")
        .await;
    assert_eq!(
        verify_with_jwks(&idp, &good, "rp").await.unwrap()["sub"],
        "alice"
    );
    assert_eq!(
        jsonwebtoken::decode_header(&good).unwrap().typ.as_deref(),
        Some("logout+jwt")
    );
    // A tampered token endpoint: the id_token says another audience.
    idp.tamper_id_token(json!({ "set": { "aud": "someone-else" } }))
        .await;
    let start = authorize_url(&idp, "rp", "st-4", "n-4", &verifier);
    let cb = idp.complete_login(&start, "alice").await;
    let tokens = redeem(&idp, "rp", "rp-secret", &idp::query(&cb)["code"], &verifier).await;
    let t = idp::jwt_claims(tokens["id_token"].as_str().unwrap());
    assert_eq!(t["aud"], "someone-else");
    assert!(
        verify_with_jwks(&idp, tokens["id_token"].as_str().unwrap(), "rp")
            .await
            .is_err()
    );
    assert!(
        verify_with_jwks(&idp, tokens["id_token"].as_str().unwrap(), "someone-else")
            .await
            .is_ok()
    );
}

/// Two providers at once have two issuers and two key sets (the mix-up
/// tests need both); claims changed between sign-ins show in the next
/// token; a direct back-channel logout to a dead receiver is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_two_providers_have_their_own_issuers_and_keys() {
    let a = Idp::start(IdpConfig::default()).await;
    let b = Idp::start(IdpConfig::default()).await;
    assert_ne!(a.issuer, b.issuer);
    assert_eq!(a.discovery().await["issuer"], a.issuer);
    assert_eq!(b.discovery().await["issuer"], b.issuer);
    let ka = http::get(a.addr, "/jwks", None).await.json();
    let kb = http::get(b.addr, "/jwks", None).await.json();
    assert_ne!(ka["keys"][0]["n"], kb["keys"][0]["n"]);

    let dead = format!("http://127.0.0.1:{}/gone", free_port());
    a.add_client(client("rp", "s", &[RP_CALLBACK], Some(&dead)))
        .await;
    a.set_account("bob", account(json!({ "groups": ["one"] }), &["pwd"]))
        .await;
    let verifier = "w".repeat(43);
    let cb = a
        .complete_login(&authorize_url(&a, "rp", "s1", "n1", &verifier), "bob")
        .await;
    let t = redeem(&a, "rp", "s", &idp::query(&cb)["code"], &verifier).await;
    assert_eq!(
        idp::jwt_claims(t["id_token"].as_str().unwrap())["groups"],
        json!(["one"])
    );
    a.set_account("bob", account(json!({ "groups": ["two"] }), &["pwd"]))
        .await;
    let cb = a
        .complete_login(&authorize_url(&a, "rp", "s2", "n2", &verifier), "bob")
        .await;
    let t = redeem(&a, "rp", "s", &idp::query(&cb)["code"], &verifier).await;
    assert_eq!(
        idp::jwt_claims(t["id_token"].as_str().unwrap())["groups"],
        json!(["two"])
    );
    // A client of `a` is unknown to `b`.
    let r = http::get(
        b.addr,
        &idp::path_and_query(&authorize_url(&b, "rp", "s", "n", &verifier)),
        None,
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.text().contains("invalid_client"), "{r:?}");
    let err = a.backchannel_logout("rp", "bob", Some("x")).await;
    assert!(err.is_err(), "{err:?}");
}

// ---------------------------------------------------------------------------
// The gateway against the provider (CONTRACT 8.1)
// ---------------------------------------------------------------------------

const SECRET_ENV: &str = "PORTCULLIS_IDP_CORP_SECRET";
const CLIENT_ID: &str = "portcullis";
const CLIENT_SECRET: &str = "the corp client secret, only in the env";
const CALLBACK: &str = "https://gateway.test/auth/oidc/corp/callback";
/// Short: the state cookie holds `rd`, and the gateway reads cookies of at
/// most 256 characters (see `a_long_rd_survives_the_round_trip`).
const RD: &str = "/a";

/// A gateway with the provider `corp` (browser mode enabled, an `mfa =
/// true` route under `/secure`) and its client registered at the provider
/// with the gateway's back-channel logout URI.
pub(crate) struct Fed {
    pub(crate) gw: TestGateway,
    pub(crate) idp: Idp,
}

pub(crate) fn users(list: &[(&str, Value)]) -> std::collections::BTreeMap<String, Value> {
    list.iter()
        .map(|(u, a)| (u.to_string(), a.clone()))
        .collect()
}

/// A verified corporate account with these groups and amr.
pub(crate) fn corp_user(email: &str, verified: bool, groups: &[&str], amr: &[&str]) -> Value {
    account(
        json!({ "email": email, "email_verified": verified, "groups": groups }),
        amr,
    )
}

pub(crate) fn fed_builder(idp: &Idp, provider_extra: &str, gw_extra: &str) -> Builder {
    let mut b = crate::browser::builder();
    b.extra.push_str(gw_extra);
    b.extra.push('\n');
    b.extra
        .push_str(&idp.gateway_toml("corp", CLIENT_ID, SECRET_ENV, provider_extra));
    b.routes.push_str(
        "\n[[routes]]\nprefix = \"/secure\"\nupstream = \"{UP}\"\nauth = \"required\"\nmfa = true\n",
    );
    b.env
        .insert(SECRET_ENV.to_string(), CLIENT_SECRET.to_string());
    b
}

impl Fed {
    async fn start(provider_extra: &str, accounts: &[(&str, Value)]) -> Fed {
        Self::start_with(provider_extra, "", accounts).await
    }

    async fn start_with(provider_extra: &str, gw_extra: &str, accounts: &[(&str, Value)]) -> Fed {
        let idp = Idp::start(IdpConfig {
            accounts: users(accounts),
            clients: vec![],
            ..Default::default()
        })
        .await;
        let gw = TestGateway::start_with(fed_builder(&idp, provider_extra, gw_extra)).await;
        register_gateway(&idp, &gw, "corp").await;
        Fed { gw, idp }
    }
}

/// The gateway's client at the provider: its callback, and its
/// back-channel logout URI on this gateway.
pub(crate) async fn register_gateway(idp: &Idp, gw: &TestGateway, provider: &str) {
    idp.add_client(client(
        CLIENT_ID,
        CLIENT_SECRET,
        &[&format!(
            "https://gateway.test/auth/oidc/{provider}/callback"
        )],
        Some(&format!(
            "http://{}/auth/oidc/{provider}/backchannel-logout",
            gw.addr
        )),
    ))
    .await;
}

/// The cookies a response sets, as a `Cookie` header value.
fn cookies_of(r: &http::Response) -> String {
    r.headers_all("set-cookie")
        .into_iter()
        .filter_map(|c| c.split(';').next())
        .filter(|kv| kv.split_once('=').is_some_and(|(_, v)| !v.is_empty()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `GET /auth/oidc/{provider}/start?{query}`: the provider URL it sends the
/// browser to, and the cookies that bind the sign-in to this browser.
async fn start_at(gw: &TestGateway, provider: &str, query: &str) -> (String, String) {
    let r = http::request(
        gw.addr,
        "GET",
        &format!("/auth/oidc/{provider}/start?{query}"),
        &[("accept", "text/html")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 302, "start: {r:?}");
    let loc = r.header("location").unwrap().to_string();
    (loc, cookies_of(&r))
}

fn rd_query(mode_code: bool) -> String {
    let rd: String = url::form_urlencoded::byte_serialize(RD.as_bytes()).collect();
    if mode_code {
        format!("rd={rd}&mode=code")
    } else {
        format!("rd={rd}")
    }
}

/// Deliver a provider's redirect to the gateway's callback with `cookies`.
async fn callback(gw: &TestGateway, cb: &str, cookies: &str) -> http::Response {
    let path = idp::path_and_query(cb);
    let mut h = vec![("accept", "text/html")];
    if !cookies.is_empty() {
        h.push(("cookie", cookies));
    }
    let r = http::request(gw.addr, "GET", &path, &h, None)
        .await
        .unwrap();
    assert_ne!(r.status, 500, "the callback never answers 500: {r:?}");
    r
}

/// Where a code-mode callback sent the browser: `rd` with either a
/// `login_code` (Ok) or an `error` (Err).
fn code_outcome(r: &http::Response) -> Result<String, String> {
    assert_eq!(r.status, 302, "code mode answers with a redirect: {r:?}");
    let loc = r.header("location").unwrap();
    let u = url::Url::parse("https://gateway.test")
        .unwrap()
        .join(loc)
        .unwrap();
    assert_eq!(u.path(), RD, "back to rd: {loc}");
    let q: std::collections::HashMap<String, String> = u.query_pairs().into_owned().collect();
    match (q.get("login_code"), q.get("error")) {
        (Some(c), None) => Ok(c.clone()),
        (None, Some(e)) => Err(e.clone()),
        _ => panic!("neither login_code nor error: {loc}"),
    }
}

async fn exchange(gw: &TestGateway, code: &str) -> http::Response {
    gw.post("/auth/oidc/exchange", json!({ "login_code": code }), None)
        .await
}

/// A whole code-mode sign-in at `provider` as `user`: the exchange's
/// answer, or the callback's `?error=`.
pub(crate) async fn code_signin(fed: &Fed, provider: &str, user: &str) -> Result<Value, String> {
    let (authorize, cookies) = start_at(&fed.gw, provider, &rd_query(true)).await;
    let cb = fed.idp.complete_login(&authorize, user).await;
    let code = code_outcome(&callback(&fed.gw, &cb, &cookies).await)?;
    let r = exchange(&fed.gw, &code).await;
    assert_eq!(r.status, 200, "exchange: {r:?}");
    Ok(r.json())
}

/// `POST /auth/identities/corp` with `access`: the start of a link.
async fn link_request(fed: &Fed, access: &str) -> http::Response {
    http::request(
        fed.gw.addr,
        "POST",
        "/auth/identities/corp",
        &[
            ("authorization", &format!("Bearer {access}")),
            ("content-type", "application/json"),
        ],
        Some(b"{}"),
    )
    .await
    .unwrap()
}

/// The rest of a link that `started` (a 200 of [`link_request`]) began:
/// `user` signs in at the provider, and the browser (with the start's
/// cookies) comes back through the gateway's callback.
async fn finish_link(fed: &Fed, started: &http::Response, user: &str) -> http::Response {
    let cookies = cookies_of(started);
    let authorize = started.json()["authorize_url"]
        .as_str()
        .unwrap()
        .to_string();
    let cb = fed.idp.complete_login(&authorize, user).await;
    callback(&fed.gw, &cb, &cookies).await
}

/// [`code_signin`] that must succeed with tokens; the access token's claims.
async fn signed_in(fed: &Fed, user: &str) -> (Value, Value) {
    let v = code_signin(fed, "corp", user)
        .await
        .unwrap_or_else(|e| panic!("sign-in of {user} refused: {e}"));
    let access = v["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no tokens: {v}"));
    let claims = idp::jwt_claims(access);
    (v, claims)
}

fn amr(claims: &Value) -> Vec<String> {
    claims["amr"]
        .as_array()
        .unwrap_or_else(|| panic!("no amr: {claims}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn roles(claims: &Value) -> Vec<String> {
    let mut r: Vec<String> = claims["roles"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    r.sort();
    r
}

/// The happy path in code mode: `/start` sends the browser to the provider
/// with state, nonce and PKCE S256 and a browser-bound cookie; after the
/// provider's login the callback answers `rd?login_code=`, exchanged once
/// for the login shape of a new account (JIT sign-up) whose tokens carry
/// `amr ["fed"]` and pass a proxied route; no token travels in a URL; the
/// next sign-in finds the same account; the metric counts both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_mode_signs_up_then_signs_in_with_the_provider() {
    let fed = Fed::start(
        "",
        &[("ann", corp_user("ann@corp.example", true, &[], &["pwd"]))],
    )
    .await;
    let (authorize, cookies) = start_at(&fed.gw, "corp", &rd_query(true)).await;
    assert!(authorize.starts_with(&fed.idp.url("/auth?")), "{authorize}");
    let q = idp::query(&authorize);
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["redirect_uri"], CALLBACK);
    assert_eq!(q["code_challenge_method"], "S256");
    for p in ["state", "nonce", "code_challenge"] {
        assert!(q.get(p).is_some_and(|v| v.len() >= 16), "{p}: {authorize}");
    }
    assert!(!cookies.is_empty(), "the state is bound to the browser");
    assert!(!authorize.contains(CLIENT_SECRET));

    let cb = fed.idp.complete_login(&authorize, "ann").await;
    assert!(cb.starts_with(CALLBACK), "{cb}");
    let r = callback(&fed.gw, &cb, &cookies).await;
    let code = code_outcome(&r).unwrap();
    let loc = r.header("location").unwrap();
    assert!(
        !loc.contains("access_token") && !loc.contains("eyJ"),
        "{loc}"
    );
    let r = exchange(&fed.gw, &code).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["user"]["email"], "ann@corp.example", "{v}");
    let access = v["access_token"].as_str().unwrap();
    assert!(v["refresh_token"].is_string());
    let claims = idp::jwt_claims(access);
    assert_eq!(amr(&claims), ["fed"]);
    let r = fed.gw.get("/app/x", Some(access)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echoed(&r, "x-user-email"), ["ann@corp.example"]);
    // An amr "fed" token does not pass an mfa route.
    assert_eq!(fed.gw.get("/secure/x", Some(access)).await.status, 403);

    // Again: the same account, not a second one.
    let (_, again) = signed_in(&fed, "ann").await;
    assert_eq!(again["sub"], claims["sub"]);
    let m = fed.gw.metrics().await;
    let total: f64 = m
        .lines()
        .filter(|l| {
            l.starts_with("portcullis_federated_logins_total{") && l.contains("provider=\"corp\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(total >= 2.0, "{m}");
    // The secret never appears in the metrics or the config echo.
    assert!(!m.contains(CLIENT_SECRET));
}

/// The happy path in browser mode: the callback sets the gateway's session
/// cookie and sends the browser to `rd`, where the proxied app sees the
/// identity; the state cookie is used up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_mode_sets_the_session_cookie_and_returns_to_rd() {
    let fed = Fed::start(
        "",
        &[("bea", corp_user("bea@corp.example", true, &[], &["pwd"]))],
    )
    .await;
    let (authorize, cookies) = start_at(&fed.gw, "corp", &rd_query(false)).await;
    let cb = fed.idp.complete_login(&authorize, "bea").await;
    let r = callback(&fed.gw, &cb, &cookies).await;
    assert!(matches!(r.status, 302 | 303), "{r:?}");
    let loc = r.header("location").unwrap();
    assert!(loc == RD || loc.ends_with(RD), "{loc}");
    let session = crate::browser::set_cookie(&r, "__Host-portcullis")
        .unwrap_or_else(|| panic!("no session cookie: {r:?}"))
        .to_string();
    assert!(!session.contains('.'), "the cookie never holds a JWT");
    let r = crate::browser::browse(&fed.gw, RD, &session).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echoed(&r, "x-user-email"), ["bea@corp.example"]);
    // The same callback again (its state cookie too): refused.
    let r = callback(&fed.gw, &cb, &cookies).await;
    assert!(
        crate::browser::set_cookie(&r, "__Host-portcullis").is_none_or(|c| c.is_empty()),
        "{r:?}"
    );
    assert!((400..500).contains(&r.status) || r.status == 302, "{r:?}");
}

/// A GitHub-style `kind = "oauth2"` provider: explicit authorize and token
/// URLs, the user from the userinfo URL (the provider's `/me`); an email
/// without a verified flag there is unverified: with `link_by_email` it
/// links nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth2_provider_signs_in_through_its_userinfo_url() {
    let idp = Idp::start(IdpConfig {
        accounts: users(&[
            (
                "octo",
                account(
                    json!({ "email": "octo@gh.example", "email_verified": true }),
                    &["pwd"],
                ),
            ),
            // GitHub's /user: an email with no verified flag is unverified.
            (
                "ghost",
                account(json!({ "email": "octo@gh.example" }), &["pwd"]),
            ),
        ]),
        clients: vec![],
        ..Default::default()
    })
    .await;
    let mut b = crate::browser::builder();
    b.extra.push_str(&idp.gateway_toml_oauth2(
        "gh",
        CLIENT_ID,
        SECRET_ENV,
        "email_verified_claim = \"email_verified\"\nlink_by_email = true\n",
    ));
    b.env
        .insert(SECRET_ENV.to_string(), CLIENT_SECRET.to_string());
    let gw = TestGateway::start_with(b).await;
    register_gateway(&idp, &gw, "gh").await;
    let fed = Fed { gw, idp };
    let v = code_signin(&fed, "gh", "octo").await.unwrap();
    assert_eq!(v["user"]["email"], "octo@gh.example", "{v}");
    let access = v["access_token"].as_str().unwrap();
    assert_eq!(amr(&idp::jwt_claims(access)), ["fed"]);
    assert_eq!(fed.gw.get("/app/x", Some(access)).await.status, 200);
    // Another identity with octo's address but no verified flag cannot
    // claim octo's account: refused, never signed into it.
    match code_signin(&fed, "gh", "ghost").await {
        Ok(v) => {
            let c = idp::jwt_claims(v["access_token"].as_str().unwrap());
            assert_ne!(c["sub"], idp::jwt_claims(access)["sub"]);
        }
        Err(e) => assert!(
            [
                "email_not_verified",
                "account_exists",
                "signup_disabled",
                "provider_error"
            ]
            .contains(&e.as_str()),
            "{e}"
        ),
    }
}

/// `allow_signup = false`: a first sign-in is refused with
/// `signup_disabled` and creates no account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_off_refuses_a_first_sign_in() {
    let fed = Fed::start(
        "allow_signup = false\n",
        &[("cy", corp_user("cy@corp.example", true, &[], &["pwd"]))],
    )
    .await;
    assert_eq!(
        code_signin(&fed, "corp", "cy").await.unwrap_err(),
        "signup_disabled"
    );
    // No account was created: registering the address works.
    assert_eq!(
        fed.gw.register("cy@corp.example", PASSWORD).await.status,
        201
    );
}

/// Linking by email (CONTRACT 8.1), both ways: with `link_by_email` a
/// VERIFIED provider email links to an existing account whose email is
/// verified (the same account, its password still works); an unverified
/// provider email, or an unverified local account (pre-account takeover),
/// is refused (`account_exists` or `email_not_verified`); without
/// `link_by_email` a verified match is refused with `account_exists`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linking_by_email_needs_both_sides_verified_and_link_by_email() {
    let accounts = [
        ("v", corp_user("verified@corp.example", true, &[], &["pwd"])),
        (
            "u",
            corp_user("unverified-idp@corp.example", false, &[], &["pwd"]),
        ),
        (
            "squat",
            corp_user("squatted@corp.example", true, &[], &["pwd"]),
        ),
    ];
    let fed = Fed::start("link_by_email = true\n", &accounts).await;
    // Verified on both sides: linked to the existing account.
    let local = fed.gw.admin_add_user("verified@corp.example", &[]).await;
    let (_, claims) = signed_in(&fed, "v").await;
    let local_id = local["id"]
        .as_str()
        .or(local["user"]["id"].as_str())
        .map(str::to_string);
    let mine = fed.gw.signin("verified@corp.example", PASSWORD).await;
    assert_eq!(
        claims["sub"],
        idp::jwt_claims(&mine.access)["sub"],
        "the identity signed into the existing account ({local_id:?})"
    );
    // The provider does not vouch for the address: refused.
    fed.gw
        .admin_add_user("unverified-idp@corp.example", &[])
        .await;
    let refused = ["account_exists", "email_not_verified"];
    let e = code_signin(&fed, "corp", "u").await.unwrap_err();
    assert!(refused.contains(&e.as_str()), "{e}");
    // Someone registered the victim's address without verifying it (a
    // pre-account takeover): the provider's sign-in must not join it.
    assert_eq!(
        fed.gw
            .register("squatted@corp.example", PASSWORD)
            .await
            .status,
        201
    );
    let e = code_signin(&fed, "corp", "squat").await.unwrap_err();
    assert!(refused.contains(&e.as_str()), "{e}");
    // The identity is not linked to the squatted account.
    let r = fed.gw.login("squatted@corp.example", PASSWORD).await;
    if r.status == 200 {
        let t = r.json()["access_token"].as_str().unwrap().to_string();
        let list = fed.gw.get("/auth/identities", Some(&t)).await.json();
        assert_eq!(list["identities"], json!([]), "{list}");
    }

    // link_by_email = false: a verified match is refused as well.
    let off = Fed::start(
        "link_by_email = false\n",
        &[("v", corp_user("verified@corp.example", true, &[], &["pwd"]))],
    )
    .await;
    off.gw.admin_add_user("verified@corp.example", &[]).await;
    assert_eq!(
        code_signin(&off, "corp", "v").await.unwrap_err(),
        "account_exists"
    );
    // In browser mode the refusal is a page, with no session.
    let (authorize, cookies) = start_at(&off.gw, "corp", &rd_query(false)).await;
    let cb = off.idp.complete_login(&authorize, "v").await;
    let r = callback(&off.gw, &cb, &cookies).await;
    assert!(
        crate::browser::set_cookie(&r, "__Host-portcullis").is_none(),
        "{r:?}"
    );
    if r.status == 302 || r.status == 303 {
        assert!(
            r.header("location").unwrap().contains("account_exists"),
            "{r:?}"
        );
    } else {
        assert!((400..500).contains(&r.status), "{r:?}");
        assert_eq!(
            r.header("x-portcullis-error"),
            Some("account_exists"),
            "{r:?}"
        );
        assert!(r.text().contains("<html"), "a page: {r:?}");
    }
}

/// Roles from `roles_claim` through `role_map`: unmapped values are
/// ignored, and the roles are taken again at every federated sign-in (a
/// group removed at the provider removes the role).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_follow_the_mapped_groups_at_every_sign_in() {
    let fed = Fed::start(
        "roles_claim = \"groups\"\nrole_map = { \"corp-admins\" = \"admin\", \"corp-ops\" = \"ops\" }\n",
        &[(
            "dee",
            corp_user("dee@corp.example", true, &["corp-admins", "corp-ops", "lunch-club"], &["pwd"]),
        )],
    )
    .await;
    let (v, claims) = signed_in(&fed, "dee").await;
    assert_eq!(roles(&claims), ["admin", "ops"], "{claims}");
    let access = v["access_token"].as_str().unwrap();
    assert_eq!(fed.gw.get("/admin/x", Some(access)).await.status, 200);
    // The provider drops dee from the admins.
    fed.idp
        .set_account(
            "dee",
            corp_user(
                "dee@corp.example",
                true,
                &["corp-ops", "lunch-club"],
                &["pwd"],
            ),
        )
        .await;
    let (v, claims) = signed_in(&fed, "dee").await;
    assert_eq!(roles(&claims), ["ops"], "{claims}");
    let access = v["access_token"].as_str().unwrap();
    assert_eq!(fed.gw.get("/admin/x", Some(access)).await.status, 403);
    assert_eq!(fed.gw.get("/ops/x", Some(access)).await.status, 200);
    // No mapped group at all: no role.
    fed.idp
        .set_account(
            "dee",
            corp_user("dee@corp.example", true, &["lunch-club"], &["pwd"]),
        )
        .await;
    let (_, claims) = signed_in(&fed, "dee").await;
    assert!(roles(&claims).is_empty(), "{claims}");
}

/// `trust_mfa` both ways: trusted, the provider's `amr` "mfa" makes the
/// token `["fed","mfa"]` and the `mfa = true` route accepts it; untrusted
/// (the default), the same provider answer gives `["fed"]` and a 403 there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_mfa_decides_whether_the_providers_mfa_counts() {
    let strong = corp_user("eve@corp.example", true, &[], &["pwd", "mfa"]);
    let trusted = Fed::start("trust_mfa = true\n", &[("eve", strong.clone())]).await;
    let (v, claims) = signed_in(&trusted, "eve").await;
    let mut a = amr(&claims);
    a.sort();
    assert_eq!(a, ["fed", "mfa"]);
    let access = v["access_token"].as_str().unwrap();
    assert_eq!(trusted.gw.get("/secure/x", Some(access)).await.status, 200);
    // Trusted, but this sign-in was a password only: no mfa.
    trusted
        .idp
        .set_account("eve", corp_user("eve@corp.example", true, &[], &["pwd"]))
        .await;
    let (v, claims) = signed_in(&trusted, "eve").await;
    assert_eq!(amr(&claims), ["fed"]);
    let access = v["access_token"].as_str().unwrap();
    assert_eq!(trusted.gw.get("/secure/x", Some(access)).await.status, 403);

    let untrusted = Fed::start("", &[("eve", strong)]).await;
    let (v, claims) = signed_in(&untrusted, "eve").await;
    assert_eq!(amr(&claims), ["fed"]);
    let access = v["access_token"].as_str().unwrap();
    let r = untrusted.gw.get("/secure/x", Some(access)).await;
    assert_error(&r, 403, "mfa_required");
}

/// An account with local TOTP signing in through an untrusted provider
/// still gets the TOTP step: the exchange answers the MFA shape, and the
/// code finishes it with a token; with `trust_mfa` and the provider's
/// "mfa" the step is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_totp_account_gets_its_second_step_unless_the_provider_is_trusted() {
    use crate::common::totp::code_at;
    use portcullis::clock::Clock;
    let fed = Fed::start(
        "link_by_email = true\n",
        &[(
            "fay",
            corp_user("fay@corp.example", true, &[], &["pwd", "mfa"]),
        )],
    )
    .await;
    let secret = totp_account(&fed.gw, "fay@corp.example").await;

    let v = code_signin(&fed, "corp", "fay").await.unwrap();
    assert_eq!(v["mfa_required"], true, "{v}");
    assert!(
        v.get("access_token").is_none(),
        "no token before the code: {v}"
    );
    let token = v["mfa_token"].as_str().unwrap();
    let code = code_at(&secret, fed.gw.clock.now());
    let r = fed
        .gw
        .post(
            "/auth/mfa/verify",
            json!({ "mfa_token": token, "code": code }),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let signed = r.json();
    let claims = idp::jwt_claims(signed["access_token"].as_str().unwrap());
    assert!(amr(&claims).contains(&"otp".to_string()), "{claims}");
    assert!(amr(&claims).contains(&"fed".to_string()), "{claims}");
    // The session the second step started is the provider sign-in's: the
    // provider's sign-out ends it through back-channel logout.
    let events = fed.idp.end_session("fay").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "backchannel.success", "{events:?}");
    let r = fed
        .gw
        .post(
            "/auth/refresh",
            json!({ "refresh_token": signed["refresh_token"] }),
            None,
        )
        .await;
    assert_eq!(r.status, 401, "ended by the provider's sign-out: {r:?}");

    // A trusted provider that asserted mfa: no second step.
    let trusted = Fed::start(
        "link_by_email = true\ntrust_mfa = true\n",
        &[(
            "fay",
            corp_user("fay@corp.example", true, &[], &["pwd", "mfa"]),
        )],
    )
    .await;
    totp_account(&trusted.gw, "fay@corp.example").await;
    let (_, claims) = signed_in(&trusted, "fay").await;
    assert!(amr(&claims).contains(&"mfa".to_string()), "{claims}");
}

/// A verified local account (admin-made) with TOTP confirmed; its secret.
async fn totp_account(gw: &TestGateway, email: &str) -> Vec<u8> {
    use crate::common::totp::{base32_decode, code_at};
    use portcullis::clock::Clock;
    gw.admin_add_user(email, &[]).await;
    let s = gw.signin(email, PASSWORD).await;
    let r = gw
        .post("/auth/mfa/totp/enroll", json!({}), Some(&s.access))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
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
    gw.clock.advance(30);
    secret
}

/// The callback's defences: a tampered `state`, a callback without the
/// browser's state cookie (login CSRF: another browser's callback), the
/// same callback twice, and a `login_code` used twice all fail cleanly
/// (`invalid_state` / 400 `invalid_token`), never 500 and never a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_state_replayed_callbacks_and_used_login_codes_are_refused() {
    let fed = Fed::start(
        "",
        &[("gil", corp_user("gil@corp.example", true, &[], &["pwd"]))],
    )
    .await;
    let before = fed.gw.metrics().await;
    // Tampered state.
    let (authorize, cookies) = start_at(&fed.gw, "corp", &rd_query(true)).await;
    let cb = fed.idp.complete_login(&authorize, "gil").await;
    let state = idp::query(&cb)["state"].clone();
    let mut flipped = state.clone().into_bytes();
    flipped[4] = if flipped[4] == b'A' { b'B' } else { b'A' };
    let bad = cb.replace(
        &format!("state={state}"),
        &format!("state={}", String::from_utf8(flipped).unwrap()),
    );
    assert_ne!(bad, cb);
    assert_eq!(
        code_outcome(&callback(&fed.gw, &bad, &cookies).await).unwrap_err(),
        "invalid_state"
    );
    // Another browser (no state cookie) delivering this callback.
    let r = callback(&fed.gw, &cb, "").await;
    assert!(
        r.status != 200 && crate::browser::set_cookie(&r, "__Host-portcullis").is_none(),
        "{r:?}"
    );
    if r.status == 302 {
        assert!(r.header("location").unwrap().contains("error="), "{r:?}");
    }
    // A fresh, good one works once; replayed, it is refused.
    let (authorize, cookies) = start_at(&fed.gw, "corp", &rd_query(true)).await;
    let cb = fed.idp.complete_login(&authorize, "gil").await;
    let code = code_outcome(&callback(&fed.gw, &cb, &cookies).await).unwrap();
    assert_eq!(
        code_outcome(&callback(&fed.gw, &cb, &cookies).await).unwrap_err(),
        "invalid_state"
    );
    // The login_code: once.
    assert_eq!(exchange(&fed.gw, &code).await.status, 200);
    assert_error(&exchange(&fed.gw, &code).await, 400, "invalid_token");
    assert_error(&exchange(&fed.gw, "not-a-code").await, 400, "invalid_token");
    // Sixteen parallel exchanges of one fresh code: exactly one wins.
    let (authorize, cookies) = start_at(&fed.gw, "corp", &rd_query(true)).await;
    let cb = fed.idp.complete_login(&authorize, "gil").await;
    let code = code_outcome(&callback(&fed.gw, &cb, &cookies).await).unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let addr = fed.gw.addr;
            let body = json!({ "login_code": code });
            tokio::spawn(async move {
                http::post_json(addr, "/auth/oidc/exchange", &body, None)
                    .await
                    .status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 400).count(),
        15,
        "{statuses:?}"
    );
    // A provider error (consent denied) comes back as provider_error.
    let (authorize, cookies) = start_at(&fed.gw, "corp", &rd_query(true)).await;
    let cb = fed.idp.deny_login(&authorize, "gil").await;
    assert_eq!(
        code_outcome(&callback(&fed.gw, &cb, &cookies).await).unwrap_err(),
        "provider_error"
    );
    let after = fed.gw.metrics().await;
    assert_ne!(before, after);
    // An unknown provider and a bad rd: clear 4xx.
    let r = http::get(fed.gw.addr, "/auth/oidc/nope/start?rd=%2F", None).await;
    assert!((400..500).contains(&r.status), "{r:?}");
    let r = http::get(
        fed.gw.addr,
        "/auth/oidc/corp/start?rd=https%3A%2F%2Fevil.example%2F",
        None,
    )
    .await;
    assert!((400..500).contains(&r.status), "an open redirect: {r:?}");
}

/// The id_token checks against a real provider that misbehaves: an
/// id_token for another audience, one claiming another issuer, one signed
/// with a key the provider never published (same `kid`), and one with
/// another nonce are all refused (`provider_error`), with no account made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_tokens_for_another_audience_issuer_key_or_nonce_are_refused() {
    let fed = Fed::start(
        "",
        &[("hal", corp_user("hal@corp.example", true, &[], &["pwd"]))],
    )
    .await;
    for (what, tamper) in [
        (
            "another audience",
            json!({ "set": { "aud": "another-app" } }),
        ),
        (
            "an audience list with another azp",
            json!({ "set": { "aud": [CLIENT_ID, "another-app"], "azp": "another-app" } }),
        ),
        (
            "another issuer",
            json!({ "set": { "iss": "http://127.0.0.1:1" } }),
        ),
        ("an unpublished key", json!({ "key": "other" })),
        (
            "another nonce",
            json!({ "set": { "nonce": "not-the-one-sent" } }),
        ),
        ("no nonce", json!({ "remove": ["nonce"] })),
        (
            "expired",
            json!({ "set": { "exp": 1_000_000_000u64, "iat": 999_999_000u64 } }),
        ),
    ] {
        fed.idp.tamper_id_token(tamper).await;
        let e = code_signin(&fed, "corp", "hal").await.err();
        assert_eq!(e.as_deref(), Some("provider_error"), "{what}");
    }
    let tampered = fed
        .idp
        .events()
        .await
        .iter()
        .filter(|e| e["event"] == "tampered")
        .count();
    assert_eq!(tampered, 7, "each refusal saw a tampered token");
    // No account came out of any of it; an honest token works.
    assert_eq!(fed.gw.login("hal@corp.example", PASSWORD).await.status, 401);
    fed.idp.tamper_id_token(json!({})).await;
    let (_, claims) = signed_in(&fed, "hal").await;
    assert_eq!(amr(&claims), ["fed"]);
}

/// Mix-up (two providers with their own issuers): a code and state from
/// provider A delivered to provider B's callback is refused; so is a
/// provider whose discovery names another issuer than the configured one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_is_checked_against_the_provider_that_started_it() {
    let a = Idp::start(IdpConfig {
        accounts: users(&[("ida", corp_user("ida@corp.example", true, &[], &["pwd"]))]),
        clients: vec![],
        ..Default::default()
    })
    .await;
    let b = Idp::start(IdpConfig::default()).await;
    let mut builder = fed_builder(&a, "", "");
    builder
        .extra
        .push_str(&b.gateway_toml("other", CLIENT_ID, SECRET_ENV, ""));
    let gw = TestGateway::start_with(builder).await;
    register_gateway(&a, &gw, "corp").await;
    register_gateway(&b, &gw, "other").await;
    // A's code and state, to B's callback (with the browser's cookie).
    let (authorize, cookies) = start_at(&gw, "corp", &rd_query(true)).await;
    let cb = a.complete_login(&authorize, "ida").await;
    let q = idp::query(&cb);
    assert_eq!(q["iss"], a.issuer);
    let to_b = cb.replace("/auth/oidc/corp/callback", "/auth/oidc/other/callback");
    let r = callback(&gw, &to_b, &cookies).await;
    assert_eq!(code_outcome(&r).unwrap_err(), "invalid_state", "{r:?}");
    // The RFC 9207 iss of another provider on A's own callback: refused.
    let (authorize, cookies) = start_at(&gw, "corp", &rd_query(true)).await;
    let cb = a.complete_login(&authorize, "ida").await;
    let forged = cb.replace(
        &format!(
            "iss={}",
            url::form_urlencoded::byte_serialize(a.issuer.as_bytes()).collect::<String>()
        ),
        &format!(
            "iss={}",
            url::form_urlencoded::byte_serialize(b.issuer.as_bytes()).collect::<String>()
        ),
    );
    assert_ne!(forged, cb);
    let e = code_outcome(&callback(&gw, &forged, &cookies).await).unwrap_err();
    assert!(e == "provider_error" || e == "invalid_state", "{e}");
    drop(gw);

    // A provider whose discovery names another issuer than the one
    // configured (and reached): it listens on 127.0.0.1 but says localhost.
    let liar = Idp::start(IdpConfig {
        accounts: users(&[("ida", corp_user("ida@corp.example", true, &[], &["pwd"]))]),
        issuer_host: Some("localhost".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(liar.discovery().await["issuer"], liar.issuer);
    let configured = format!("http://127.0.0.1:{}", liar.addr.port());
    let mut builder = crate::browser::builder();
    builder.extra.push_str(
        &liar
            .gateway_toml("corp", CLIENT_ID, SECRET_ENV, "")
            .replace(&liar.issuer, &configured),
    );
    builder
        .env
        .insert(SECRET_ENV.to_string(), CLIENT_SECRET.to_string());
    let gw = TestGateway::start_with(builder).await;
    register_gateway(&liar, &gw, "corp").await;
    let r = http::get(
        gw.addr,
        &format!("/auth/oidc/corp/start?{}", rd_query(true)),
        None,
    )
    .await;
    assert_ne!(r.status, 500, "{r:?}");
    let refused = match r.status {
        302 => {
            let loc = r.header("location").unwrap();
            let u = url::Url::parse("https://gateway.test")
                .unwrap()
                .join(loc)
                .unwrap();
            if u.port() == Some(liar.addr.port()) {
                let cookies = cookies_of(&r);
                let cb = liar.complete_login(u.as_str(), "ida").await;
                code_outcome(&callback(&gw, &cb, &cookies).await).err()
            } else {
                Some(loc.to_string())
            }
        }
        s => Some(s.to_string()),
    };
    assert!(
        refused.is_some(),
        "a provider with another issuer was trusted"
    );
}

/// Poll `f` until it holds, at most `limit`.
async fn eventually<F, Fut>(limit: std::time::Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Back-channel logout (OIDC Back-Channel Logout 1.0): the provider's own
/// sign-out POSTs a logout_token to the gateway, which answers 200 and ends
/// the sessions that sign-in started (the refresh token fails, the access
/// token is revoked, the browser session is gone) and no other session of
/// the account. Forged logout tokens are refused with 400: unpublished key,
/// another audience, a `nonce`, no `events`, no `sid`/`sub`, and a `jti`
/// seen before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backchannel_logout_ends_the_sessions_of_that_sign_in() {
    let fed = Fed::start(
        "link_by_email = true\n",
        &[("ivy", corp_user("ivy@corp.example", true, &[], &["pwd"]))],
    )
    .await;
    fed.gw.admin_add_user("ivy@corp.example", &[]).await;
    let local = fed.gw.signin("ivy@corp.example", PASSWORD).await;
    let (v, _) = signed_in(&fed, "ivy").await;
    let access = v["access_token"].as_str().unwrap().to_string();
    let refresh = v["refresh_token"].as_str().unwrap().to_string();
    // A browser-mode session of the same provider sign-in (same browser).
    let (authorize, cookies) = start_at(&fed.gw, "corp", &rd_query(false)).await;
    let cb = fed.idp.continue_login(&authorize, "ivy").await;
    let r = callback(&fed.gw, &cb, &cookies).await;
    let session = crate::browser::set_cookie(&r, "__Host-portcullis")
        .unwrap_or_else(|| panic!("{r:?}"))
        .to_string();
    assert_eq!(
        crate::browser::browse(&fed.gw, RD, &session).await.status,
        200
    );
    assert_eq!(fed.gw.get("/app/x", Some(&access)).await.status, 200);

    // The forgeries first: each 400, nothing ended.
    let bcl = "/auth/oidc/corp/backchannel-logout";
    let now = portcullis::clock::Clock::now(&*fed.gw.clock);
    let good = |jti: &str| {
        json!({
            "iss": fed.idp.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 120,
            "jti": jti, "sub": "ivy",
            "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
        })
    };
    let post = |token: String| {
        let addr = fed.gw.addr;
        async move {
            let body = format!("logout_token={token}");
            http::request(
                addr,
                "POST",
                bcl,
                &[("content-type", "application/x-www-form-urlencoded")],
                Some(body.as_bytes()),
            )
            .await
            .unwrap()
        }
    };
    let typ = json!({ "typ": "logout+jwt" });
    let mut forged = Vec::new();
    forged.push((
        "unpublished key",
        fed.idp.sign(good("f1"), typ.clone(), "other").await,
    ));
    let mut c = good("f2");
    c["aud"] = json!("another-app");
    forged.push((
        "another audience",
        fed.idp.sign(c, typ.clone(), "provider").await,
    ));
    let mut c = good("f3");
    c["nonce"] = json!("n");
    forged.push(("a nonce", fed.idp.sign(c, typ.clone(), "provider").await));
    let mut c = good("f4");
    c.as_object_mut().unwrap().remove("events");
    forged.push(("no events", fed.idp.sign(c, typ.clone(), "provider").await));
    let mut c = good("f5");
    c.as_object_mut().unwrap().remove("sub");
    forged.push((
        "no sid or sub",
        fed.idp.sign(c, typ.clone(), "provider").await,
    ));
    let mut c = good("f6");
    c["iss"] = json!("http://127.0.0.1:1");
    forged.push((
        "another issuer",
        fed.idp.sign(c, typ.clone(), "provider").await,
    ));
    for (what, token) in forged {
        let r = post(token).await;
        assert_eq!(r.status, 400, "{what}: {r:?}");
    }
    let r = post("not.a.jwt".into()).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(fed.gw.get("/app/x", Some(&access)).await.status, 200);

    // The real thing: the provider's own sign-out.
    let events = fed.idp.end_session("ivy").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0]["event"], "backchannel.success",
        "the gateway answered 200: {events:?}"
    );
    let r = fed
        .gw
        .post("/auth/refresh", json!({ "refresh_token": refresh }), None)
        .await;
    assert_eq!(r.status, 401, "{r:?}");
    eventually(
        std::time::Duration::from_secs(5),
        "access revoked",
        || async { fed.gw.get("/app/x", Some(&access)).await.status == 401 },
    )
    .await;
    let r = crate::browser::browse(&fed.gw, RD, &session).await;
    assert_ne!(r.status, 200, "the browser session ended: {r:?}");
    // The password session of the same account is not the provider's.
    assert_eq!(fed.gw.get("/app/x", Some(&local.access)).await.status, 200);

    // A jti seen before: refused.
    let (_, _) = signed_in(&fed, "ivy").await;
    let token = fed.idp.sign(good("once"), typ.clone(), "provider").await;
    assert_eq!(post(token.clone()).await.status, 200);
    assert_eq!(post(token).await.status, 400, "a replayed jti");
}

/// The logout reaches every gateway: two gateways on one PostgreSQL
/// database; the sign-in happens on the first, the provider's logout_token
/// lands on the second (its back-channel URI), and the session ends on the
/// first too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backchannel_logout_on_one_gateway_ends_the_session_on_another_on_postgres() {
    let cluster = pg::required();
    let url = cluster.database().await;
    let idp = Idp::start(IdpConfig {
        accounts: users(&[("jo", corp_user("jo@corp.example", true, &[], &["pwd"]))]),
        clients: vec![],
        ..Default::default()
    })
    .await;
    let shared = format!("[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\n");
    let mut gws = Vec::new();
    for _ in 0..2 {
        let mut b = fed_builder(&idp, "", &shared);
        b.env.insert(
            "PORTCULLIS_JWT_SECRET".into(),
            "a shared HS256 secret of at least 32 bytes!!".into(),
        );
        b.env.insert(
            "PORTCULLIS_REFRESH_SECRET".into(),
            "a shared refresh-token key, 32 bytes or more".into(),
        );
        gws.push(TestGateway::start_with(b).await);
    }
    // The provider knows one back-channel URI: the second gateway's.
    register_gateway(&idp, &gws[1], "corp").await;
    let fed = Fed {
        gw: gws.remove(0),
        idp,
    };
    let (v, _) = signed_in(&fed, "jo").await;
    let access = v["access_token"].as_str().unwrap().to_string();
    let refresh = v["refresh_token"].as_str().unwrap().to_string();
    assert_eq!(fed.gw.get("/app/x", Some(&access)).await.status, 200);
    assert_eq!(gws[0].get("/app/x", Some(&access)).await.status, 200);
    let events = fed.idp.end_session("jo").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "backchannel.success", "{events:?}");
    for gw in [&fed.gw, &gws[0]] {
        eventually(
            std::time::Duration::from_secs(5),
            "revoked everywhere",
            || async { gw.get("/app/x", Some(&access)).await.status == 401 },
        )
        .await;
    }
    let r = fed
        .gw
        .post("/auth/refresh", json!({ "refresh_token": refresh }), None)
        .await;
    assert_eq!(r.status, 401, "{r:?}");
}

/// Linking while signed in and unlinking: `POST /auth/identities/corp`
/// (recent sign-in needed) gives an authorize URL whose sign-in links the
/// identity to this account, listed by `GET /auth/identities`; the
/// identity then signs into this account; it cannot be linked to a second
/// account (`identity_taken`); unlinking works for an account with a
/// password and is refused (`last_sign_in_method`) for an account whose
/// only way in is the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_link_while_signed_in_and_refuse_to_unlink_the_last_way_in() {
    let fed = Fed::start(
        "",
        &[
            (
                "kim",
                corp_user("kim-at-corp@corp.example", true, &[], &["pwd"]),
            ),
            ("lee", corp_user("lee@corp.example", true, &[], &["pwd"])),
        ],
    )
    .await;
    fed.gw.admin_add_user("kim@home.example", &[]).await;
    let kim = fed.gw.signin("kim@home.example", PASSWORD).await;
    let r = fed.gw.get("/auth/identities", Some(&kim.access)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["identities"], json!([]));
    assert_eq!(fed.gw.get("/auth/identities", None).await.status, 401);

    let r = link_request(&fed, &kim.access).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = finish_link(&fed, &r, "kim").await;
    assert!(matches!(r.status, 200 | 302 | 303), "{r:?}");
    assert!(
        !r.header("location").unwrap_or("").contains("error="),
        "{r:?}"
    );
    let list = fed
        .gw
        .get("/auth/identities", Some(&kim.access))
        .await
        .json();
    let ids = list["identities"].as_array().unwrap();
    assert_eq!(ids.len(), 1, "{list}");
    assert_eq!(ids[0]["provider"], "corp");
    assert_eq!(ids[0]["subject"], "kim");
    assert_eq!(ids[0]["email"], "kim-at-corp@corp.example");
    assert!(ids[0]["linked_at"].is_string() || ids[0]["linked_at"].is_number());
    // The identity now signs into kim's account (different emails).
    let (_, claims) = signed_in(&fed, "kim").await;
    assert_eq!(claims["sub"], idp::jwt_claims(&kim.access)["sub"]);

    // Another account trying to link kim's identity: identity_taken.
    fed.gw.admin_add_user("other@home.example", &[]).await;
    let other = fed.gw.signin("other@home.example", PASSWORD).await;
    let r = link_request(&fed, &other.access).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = finish_link(&fed, &r, "kim").await;
    let shown = format!(
        "{} {} {}",
        r.header("location").unwrap_or(""),
        r.header("x-portcullis-error").unwrap_or(""),
        r.text()
    );
    assert!(shown.contains("identity_taken"), "{r:?}");
    let list = fed
        .gw
        .get("/auth/identities", Some(&other.access))
        .await
        .json();
    assert_eq!(list["identities"], json!([]));

    // Unlink: kim has a password, so it may go.
    let del = |token: String| {
        let addr = fed.gw.addr;
        async move {
            http::request(
                addr,
                "DELETE",
                "/auth/identities/corp",
                &[("authorization", &format!("Bearer {token}"))],
                None,
            )
            .await
            .unwrap()
        }
    };
    let r = del(kim.access.clone()).await;
    assert_eq!(r.status, 204, "{r:?}");
    let list = fed
        .gw
        .get("/auth/identities", Some(&kim.access))
        .await
        .json();
    assert_eq!(list["identities"], json!([]));
    // Lee exists only through the provider (JIT): unlinking is refused.
    let (v, _) = signed_in(&fed, "lee").await;
    let r = del(v["access_token"].as_str().unwrap().to_string()).await;
    assert_error(&r, 409, "last_sign_in_method");
    // Linking needs a recent sign-in (accounts.reauth_secs, 300 s).
    let s = fed.gw.signin("kim@home.example", PASSWORD).await;
    fed.gw.clock.advance(400);
    let r = link_request(&fed, &s.access).await;
    assert_error(&r, 403, "reauth_required");
}

/// Linked identities are part of a backup: after the database is lost and
/// restored, the provider's identity still signs into the same account
/// (without the link it would be `account_exists`) and is listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_keep_the_links() {
    let mut fed = Fed::start(
        "",
        &[("max", corp_user("max@corp.example", true, &[], &["pwd"]))],
    )
    .await;
    let (_, first) = signed_in(&fed, "max").await;
    let cfg = fed.gw.config_path().display().to_string();
    let file = fed.gw.dir.path().join("fed.backup").display().to_string();
    let cli = |args: &[&str]| {
        let mut cmd = bin::command(args);
        cmd.env(SECRET_ENV, CLIENT_SECRET);
        bin::run(cmd, None, bin::CLI_LIMIT)
    };
    fed.gw.stop();
    let out = cli(&["backup", "--config", &cfg, "--out", &file]);
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stdout.contains("identit"),
        "the backup counts links: {}",
        out.stdout
    );
    std::fs::remove_dir_all(fed.gw.data_dir().join("db")).unwrap();
    let out = cli(&["restore", "--config", &cfg, "--from", &file]);
    assert!(out.ok(), "{out:?}");
    fed.gw.restart();
    let (v, again) = signed_in(&fed, "max").await;
    assert_eq!(again["sub"], first["sub"]);
    let list = fed
        .gw
        .get("/auth/identities", v["access_token"].as_str())
        .await
        .json();
    assert_eq!(list["identities"][0]["subject"], "max", "{list}");
}

/// The portal's provider button in a real Chromium
/// (tests/browser/federation_e2e.py): a protected page sends the browser
/// to the sign-in page, whose "corp SSO" button leads to the provider's
/// own pages; after the user id and the consent the gateway's callback
/// sets the session cookie and the browser lands on the page it asked
/// for with its identity; the sessions page lists the linked identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chromium_signs_in_with_the_portal_button() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let py = tokio::task::spawn_blocking(crate::browser::selenium_python)
        .await
        .unwrap();
    let idp = Idp::start(IdpConfig {
        accounts: users(&[("nia", corp_user("nia@corp.example", true, &[], &["pwd"]))]),
        clients: vec![],
        ..Default::default()
    })
    .await;
    let mut b = fed_builder(&idp, "", "");
    b.link_base_url = "https://localhost:{TLS_PORT}".into();
    let gw = TestGateway::start_with(b).await;
    let origin = format!("https://localhost:{}", gw.tls_addr.port());
    idp.add_client(client(
        CLIENT_ID,
        CLIENT_SECRET,
        &[&format!("{origin}/auth/oidc/corp/callback")],
        None,
    ))
    .await;
    let shots = std::env::var("PORTCULLIS_SCREENSHOTS")
        .unwrap_or_else(|_| format!("{}/screenshots", env!("CARGO_TARGET_TMPDIR")));
    let cfg = json!({
        "gateway": origin,
        "issuer": idp.issuer,
        "user": "nia",
        "email": "nia@corp.example",
        "button": "corp SSO",
        "screenshots": shots,
    });
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/browser/federation_e2e.py"
    );
    let mut child = Command::new(&py)
        .arg(script)
        .arg(cfg.to_string())
        .stdin(Stdio::null())
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
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let log: Vec<String> =
        tokio::task::block_in_place(|| stdout.lines().map_while(Result::ok).collect());
    let status = child.wait().unwrap();
    let stderr = stderr.join().unwrap_or_default();
    assert!(
        status.success() && log.last().map(String::as_str) == Some("PASSED"),
        "the browser test failed ({status}):\n{}\n{stderr}",
        log.join("\n")
    );
    // The page asked for reached the app once, as nia (Chromium's own
    // `/favicon.ico` fetches under the same session are not the page).
    let requests = gw.upstream.requests();
    let page: Vec<&Value> = requests
        .iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/app/fed"))
        })
        .collect();
    let seen: Vec<String> = page
        .iter()
        .flat_map(|r| echoed_in(r, "x-user-email"))
        .collect();
    assert_eq!(seen, ["nia@corp.example"], "{requests:?}");
    for r in &requests {
        let p = r["path"].as_str().unwrap_or_default();
        assert!(
            p.starts_with("/app/fed") || p == "/favicon.ico",
            "an unexpected request reached the app: {r}"
        );
    }
}

/// A logout_token may name the session by `sid` alone (OIDC Back-Channel
/// Logout 1.0 §2.4: `sid` or `sub` or both; CONTRACT 8.1 "every session
/// started through that provider `sid` (or `sub`) ends"): the gateway ends
/// the session of that sign-in, and only it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_token_with_only_a_sid_ends_that_sign_in() {
    let fed = Fed::start(
        "",
        &[("oli", corp_user("oli@corp.example", true, &[], &["pwd"]))],
    )
    .await;
    let (first, _) = signed_in(&fed, "oli").await;
    let sid = fed.idp.id_tokens().await.last().unwrap()["sid"]
        .as_str()
        .expect("the provider gave a sid")
        .to_string();
    // A second sign-in in another browser: another provider session.
    let (second, _) = signed_in(&fed, "oli").await;
    let other_sid = fed.idp.id_tokens().await.last().unwrap()["sid"].clone();
    assert_ne!(other_sid, json!(sid));
    let now = portcullis::clock::Clock::now(&*fed.gw.clock);
    let token = fed
        .idp
        .sign(
            json!({
                "iss": fed.idp.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 120,
                "jti": "sid-only", "sid": sid,
                "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
            }),
            json!({ "typ": "logout+jwt" }),
            "provider",
        )
        .await;
    let body = format!("logout_token={token}");
    let r = http::request(
        fed.gw.addr,
        "POST",
        "/auth/oidc/corp/backchannel-logout",
        &[("content-type", "application/x-www-form-urlencoded")],
        Some(body.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let refresh = |v: &Value| json!({ "refresh_token": v["refresh_token"] });
    let r = fed.gw.post("/auth/refresh", refresh(&first), None).await;
    assert_eq!(r.status, 401, "the sid's session ended: {r:?}");
    let r = fed.gw.post("/auth/refresh", refresh(&second), None).await;
    assert_eq!(r.status, 200, "the other session did not: {r:?}");
}

/// A realistic `rd` (a deep link with a query) survives the round trip:
/// the state cookie that carries it must still be read at the callback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_rd_survives_the_round_trip() {
    let fed = Fed::start(
        "",
        &[("pia", corp_user("pia@corp.example", true, &[], &["pwd"]))],
    )
    .await;
    let rd = "/app/projects/42/issues?state=open&sort=updated&page=3";
    let enc: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
    let (authorize, cookies) = start_at(&fed.gw, "corp", &format!("rd={enc}&mode=code")).await;
    let cb = fed.idp.complete_login(&authorize, "pia").await;
    let r = callback(&fed.gw, &cb, &cookies).await;
    assert_eq!(
        r.status,
        302,
        "{:?} (state cookie: {} chars)",
        r.header("x-portcullis-error"),
        cookies.len()
    );
    let loc = r.header("location").unwrap();
    assert!(loc.contains("login_code="), "{loc}");
}
