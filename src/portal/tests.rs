//! Every value a page echoes comes out escaped; the markup the tests and
//! the browser script look for is there.

use super::*;

/// Text that would break out of an element or an attribute, either quote.
const HOSTILE: &str = r#"x"><script>alert(1)</script><b a='y'>&amp;"#;
const ESCAPED: &str =
    "x&#34;&#62;&#60;script&#62;alert(1)&#60;/script&#62;&#60;b a=&#39;y&#39;&#62;&#38;amp;";

fn frame() -> Frame<'static> {
    Frame {
        csrf: HOSTILE,
        alert: Some(HOSTILE),
    }
}

/// The page has no markup from `HOSTILE`, and shows it escaped `times`
/// times (or at least once when `times` is 0).
fn assert_escaped(page: &str, times: usize) {
    assert!(!page.contains("<script>"), "{page}");
    assert!(!page.contains("<b a="), "{page}");
    assert!(!page.contains(r#"x">"#), "{page}");
    assert!(!page.contains("x\"&"), "{page}");
    let n = page.matches(ESCAPED).count();
    if times == 0 {
        assert!(n > 0, "{page}");
    } else {
        assert_eq!(n, times, "{page}");
    }
}

/// Askama's escaper writes `"` as `&#34;`; the constant above says so, and
/// the assertions rely on it.
#[test]
fn the_escaper_writes_what_the_tests_expect() {
    let page = render(&frame(), &ForgotPage).unwrap();
    assert!(page.contains(ESCAPED), "{page}");
}

#[test]
fn every_echoed_value_is_escaped_on_every_page() {
    let h = HOSTILE;
    // csrf (meta + one per form) and the alert, plus the page's own values.
    let pages: Vec<(&str, String, usize)> = vec![
        (
            "login",
            render(
                &frame(),
                &LoginPage {
                    email: h,
                    rd: h,
                    providers: &[],
                },
            )
            .unwrap(),
            2 + 1 + 2,
        ),
        (
            "mfa",
            render(
                &frame(),
                &MfaPage {
                    mfa_token: h,
                    rd: h,
                },
            )
            .unwrap(),
            2 + 1 + 2,
        ),
        (
            "reauth",
            render(&frame(), &ReauthPage { totp: true }).unwrap(),
            2 + 1,
        ),
        (
            "register",
            render(&frame(), &RegisterPage { email: h }).unwrap(),
            2 + 1 + 1,
        ),
        ("forgot", render(&frame(), &ForgotPage).unwrap(), 2 + 1),
        (
            "reset",
            render(&frame(), &ResetPage { token: h }).unwrap(),
            2 + 1 + 1,
        ),
        (
            "verify",
            render(&frame(), &VerifyPage { token: h }).unwrap(),
            2 + 1 + 1,
        ),
        ("logout", render(&frame(), &LogoutPage).unwrap(), 3 + 1),
        (
            "notice",
            render(&frame(), &Notice::VerifyFailed).unwrap(),
            1 + 1,
        ),
    ];
    for (name, page, times) in pages {
        assert!(page.starts_with("<!doctype html>"), "{name}");
        assert!(page.contains(r#"<p class="alert" role="alert">"#), "{name}");
        assert_escaped(&page, times);
    }
}

fn session(id: &str, current: bool) -> SessionRow {
    SessionRow {
        id: id.into(),
        user_agent: HOSTILE.into(),
        ip: HOSTILE.into(),
        created: Time::new(HOSTILE),
        last_used: Time::new("2026-01-02T03:04:05Z"),
        current,
    }
}

#[test]
fn the_sessions_page_escapes_what_clients_and_users_chose() {
    let model = SessionsPage {
        email: HOSTILE,
        amr: HOSTILE.into(),
        notice: Some(SessionsNotice::PasskeyAdded),
        sessions: vec![session("s-1", true), session(HOSTILE, false)],
        passkeys: vec![PasskeyRow {
            id: HOSTILE.into(),
            name: HOSTILE.into(),
            created: Time::new("2026-01-02T03:04:05Z"),
        }],
        can_add_passkey: true,
        ..Default::default()
    };
    let page = render(
        &Frame {
            csrf: "tok",
            alert: None,
        },
        &model,
    )
    .unwrap();
    // email, amr; per session user agent, ip, created (twice: datetime
    // and shown); the other session's id; the passkey's name and id.
    assert_escaped(&page, 2 + 2 * 4 + 1 + 2);
    assert!(page.contains(&format!(r#"<span id="amr">{ESCAPED}</span>"#)));
    assert!(page.contains(r#"<p class="notice" role="status">Passkey added.</p>"#));
    assert!(page.contains(r#"<time datetime="2026-01-02T03:04:05Z">2026-01-02 03:04 UTC</time>"#));
    assert_eq!(page.matches("<td>This session</td>").count(), 1, "{page}");
    // One sign-out form (the other session) and one removal form.
    assert_eq!(page.matches(r#"name="csrf" value="tok""#).count(), 2);
    assert!(page.contains(r#"id="passkey-register""#));
    assert!(!page.contains(r#"id="reauth-needed""#));
    assert!(!page.contains("No passkeys yet."));
}

#[test]
fn the_sessions_page_without_passkeys_or_a_recent_sign_in() {
    let model = SessionsPage {
        email: "a@example.com",
        amr: "pwd, otp".into(),
        ..Default::default()
    };
    let page = render(
        &Frame {
            csrf: "tok",
            alert: None,
        },
        &model,
    )
    .unwrap();
    assert!(page.contains(r#"<span id="amr">pwd, otp</span>"#), "{page}");
    assert!(page.contains("<li>No passkeys yet.</li>"), "{page}");
    assert!(page.contains(r#"id="reauth-needed""#));
    assert!(!page.contains(r#"id="passkey-register""#));
    assert!(!page.contains(r#"class="notice""#));
}

/// The markup the integration tests and the browser script find things by.
#[test]
fn the_forms_keep_their_ids_labels_and_autocomplete() {
    let f = Frame {
        csrf: "tok",
        alert: None,
    };
    let login = render(
        &f,
        &LoginPage {
            email: "",
            rd: "/",
            providers: &[],
        },
    )
    .unwrap();
    for want in [
        r#"<html lang="en">"#,
        "<main>",
        r#"<meta name="csrf-token" content="tok">"#,
        r#"<input type="hidden" name="csrf" value="tok">"#,
        r#"<input type="hidden" name="rd" value="/">"#,
        r#"<label for="email">Email</label>"#,
        r#"<input id="email" name="email" type="email" autocomplete="username webauthn" value="" required>"#,
        r#"<input id="password" name="password" type="password" autocomplete="current-password" value="" required>"#,
        r#"<button type="submit">Sign in</button>"#,
        r#"<button type="button" id="passkey-login">Sign in with a passkey</button>"#,
        r#"<a href="/auth/ui/register">Create an account</a>"#,
        r#"<script src="/auth/ui/static/passkey.js"></script>"#,
        r#"<link rel="stylesheet" href="/auth/ui/static/portal.css">"#,
        "<title>Sign in · Portcullis</title>",
        "<h1>Sign in</h1>",
    ] {
        assert!(login.contains(want), "{want} not in {login}");
    }
    assert!(!login.contains("role=\"alert\""), "no alert without one");
    let register = render(&f, &RegisterPage { email: "" }).unwrap();
    assert!(register.contains(
        r#"<input id="username" name="username" type="text" autocomplete="name" value=""></p>"#
    ));
    assert!(register.contains(r#"autocomplete="new-password""#));
    let reauth = render(&f, &ReauthPage { totp: false }).unwrap();
    assert!(!reauth.contains(r#"id="code""#), "{reauth}");
    let reauth = render(&f, &ReauthPage { totp: true }).unwrap();
    assert!(
        reauth.contains(r#"autocomplete="one-time-code""#),
        "{reauth}"
    );
    let logout = render(&f, &LogoutPage).unwrap();
    assert!(logout.contains(r#"<input type="hidden" name="everywhere" value="1">"#));
    assert!(logout.contains(r#"<button type="submit">Sign out everywhere</button>"#));
    // Every visible field has its label, on every page.
    for page in [login, register, reauth, logout] {
        assert_eq!(
            page.matches("<input id=").count(),
            page.matches("<label for=").count()
        );
        assert!(!page.contains("<script>") && !page.contains(" style="));
    }
}

#[test]
fn each_notice_has_its_title_and_text() {
    let f = Frame {
        csrf: "tok",
        alert: None,
    };
    let cases = [
        (
            Notice::AccountCreated { verify_first: true },
            "follow its link to confirm your address",
        ),
        (
            Notice::AccountCreated {
                verify_first: false,
            },
            "You can sign in now.",
        ),
        (
            Notice::ResetLinkSent,
            "If an account exists for that address",
        ),
        (Notice::PasswordChanged, "Your password has been changed"),
        (Notice::EmailVerified, "your email address is confirmed"),
        (Notice::SignedOut, "You have been signed out."),
        (Notice::CsrfRefused, "This form was sent from another site"),
    ];
    for (notice, text) in cases {
        let page = render(&f, &notice).unwrap();
        assert!(page.contains(text), "{notice:?}: {page}");
        assert!(
            page.contains(&format!("<h1>{}</h1>", notice.title())),
            "{page}"
        );
    }
}

#[test]
fn the_confirm_page_runs_only_its_hashed_script() {
    for with_password in [false, true] {
        let page = confirm_link_page(&ConfirmPage {
            title: HOSTILE,
            button: "Set password",
            action: "/auth/password/reset/confirm",
            with_password,
        })
        .unwrap();
        assert_eq!(page.matches("<script>").count(), 1, "{page}");
        assert!(page.contains(&format!("<script>{CONFIRM_JS}</script>")));
        assert!(page.contains(r#"data-action="/auth/password/reset/confirm""#));
        assert_eq!(page.contains(r#"id="p1""#), with_password);
        assert_eq!(page.matches(ESCAPED).count(), 2, "{page}");
    }
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(CONFIRM_JS));
    assert!(CONFIRM_CSP.contains(&format!("script-src 'sha256-{hash}'")));
    assert!(!CONFIRM_CSP.contains("unsafe-inline"));
}

#[test]
fn times_are_shown_in_utc_minutes() {
    assert_eq!(
        Time::new("2026-01-02T03:04:05Z").shown,
        "2026-01-02 03:04 UTC"
    );
    assert_eq!(
        Time::new("2026-01-02T03:04:05+01:00").shown,
        "2026-01-02T03:04:05+01:00"
    );
    assert_eq!(Time::new("").shown, "");
}
