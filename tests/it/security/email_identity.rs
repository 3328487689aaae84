//! One mailbox, one account: IDNA domains and NFKC local parts.

use std::time::{Duration, Instant};

use super::*;

async fn gateway() -> TestGateway {
    TestGateway::start_with(Builder {
        with_smtp: true,
        ..Default::default()
    })
    .await
}

/// Waits for a message to exactly `rcpt` (the SMTP envelope recipient).
async fn wait_mail_to(gw: &TestGateway, rcpt: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = gw
            .smtp()
            .messages()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t == rcpt))
            .count();
        if got >= n {
            return;
        }
        let all: Vec<Vec<String>> = gw.smtp().messages().into_iter().map(|m| m.to).collect();
        assert!(
            Instant::now() < deadline,
            "no mail #{n} to {rcpt}; recipients so far: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Duplicate accounts through Unicode spellings of one mailbox (ASVS 4.0.3
/// V5.1.4 canonicalization; CWE-178/CWE-180, the "Spotify Unicode usernames"
/// class): `alice@bücher.example` and its Punycode form, and `m@example.test`
/// and its full-width-domain form, are one account each: the second register
/// is 409 `email_taken`, and mail goes to the ASCII (IDNA) address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicode_spellings_of_one_mailbox_are_one_account() {
    let gw = gateway().await;
    for (first, others, stored) in [
        (
            "alice@bücher.example",
            &[
                "alice@xn--bcher-kva.example",
                "alice@BÜCHER.EXAMPLE",
                "alice@bu\u{308}cher.example",
            ][..],
            "alice@xn--bcher-kva.example",
        ),
        (
            "m@example.test",
            &[
                "m@\u{ff45}\u{ff58}\u{ff41}\u{ff4d}\u{ff50}\u{ff4c}\u{ff45}.test",
                "m@example\u{3002}test",
                "\u{ff4d}@example.test",
            ][..],
            "m@example.test",
        ),
    ] {
        let r = gw.register(first, PASSWORD).await;
        assert_eq!(r.status, 201, "{first}: {r:?}");
        assert_eq!(r.json()["user"]["email"], stored, "{first}");
        let id = r.json()["user"]["id"].clone();
        for other in others {
            let r = gw.register(other, "another good passphrase").await;
            assert_error(&r, 409, "email_taken");
            // Every spelling signs in to the one account.
            let s = gw.signin(other, PASSWORD).await;
            assert_eq!(s.user["id"], id, "{other}");
        }
    }
    // The verification mail went to the ASCII address, once per account.
    wait_mail_to(&gw, "alice@xn--bcher-kva.example", 1).await;
    wait_mail_to(&gw, "m@example.test", 1).await;
    assert!(
        gw.smtp()
            .messages()
            .iter()
            .all(|m| m.to.iter().all(|t| t.is_ascii())),
        "a non-ASCII envelope recipient"
    );

    // A reset asked for under another spelling reaches the same mailbox.
    let r = post_with(
        gw.addr,
        "/auth/password/reset",
        &json!({ "email": "alice@BÜCHER.example" }),
        &[],
    )
    .await;
    assert_eq!(r.status, 202, "{r:?}");
    wait_mail_to(&gw, "alice@xn--bcher-kva.example", 2).await;
}

/// Invalid internationalized domains are input validation failures (ASVS
/// 4.0.3 V5.1.3), reported on the `email` field, never a 500 and never an
/// account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_idna_is_a_validation_failure_on_the_email_field() {
    let gw = gateway().await;
    for bad in [
        "a@xn--a.example",
        "a@-bad.example",
        "a@exa_mple.test",
        "a@exa\u{ff20}mple.test",
        "a\u{ff1c}b@example.test",
    ] {
        let r = gw.register(bad, PASSWORD).await;
        assert_error(&r, 400, "validation_failed");
        let fields = r.json()["fields"].clone();
        assert!(
            fields["email"].as_array().is_some_and(|a| !a.is_empty()),
            "{bad}: {r:?}"
        );
    }
    gw.smtp()
        .assert_no_mail_for(Duration::from_millis(200))
        .await;
}
