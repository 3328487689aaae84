//! Issue 22: linked identities in the store, held to one conformance suite
//! on sled and on PostgreSQL (each case instantiated for both below).
//! Races have N = 16 tasks released together on one store.

use std::sync::Arc;

use portcullis::store::*;
use uuid::Uuid;

use crate::store::race;

fn user(email: &str) -> User {
    User::new(Uuid::new_v4(), email, "hash-0", 1)
}

fn link(provider: &str, subject: &str, user_id: Uuid) -> LinkedIdentity {
    LinkedIdentity {
        provider: provider.into(),
        subject: subject.into(),
        user_id,
        email: Some("x@example.com".into()),
        linked_at: 100,
    }
}

fn count(rs: &[LinkOutcome], o: LinkOutcome) -> usize {
    rs.iter().filter(|r| **r == o).count()
}

/// 16 links of one identity, half to user A and half to user B, at once:
/// exactly one is linked; the winner's other tries find it already linked,
/// the loser's find it taken.
pub async fn one_identity_racing_to_two_users_has_one_winner(s: Arc<dyn Store>) {
    let (a, b) = (user("race-a@example.com"), user("race-b@example.com"));
    s.create_user(a.clone(), None).await.unwrap();
    s.create_user(b.clone(), None).await.unwrap();
    let ids = [a.id, b.id];
    let st = s.clone();
    let rs: Vec<LinkOutcome> = race(move |i| {
        let s = st.clone();
        let l = link("corp", "sub-1", ids[i % 2]);
        async move { s.link_identity(l, None, Effects::none()).await.unwrap() }
    })
    .await;
    assert_eq!(count(&rs, LinkOutcome::Linked), 1, "{rs:?}");
    let winner = rs.iter().position(|r| *r == LinkOutcome::Linked).unwrap() % 2;
    for (i, r) in rs.iter().enumerate() {
        if *r != LinkOutcome::Linked {
            let expect = if i % 2 == winner {
                LinkOutcome::AlreadyLinked
            } else {
                LinkOutcome::Taken
            };
            assert_eq!(*r, expect, "try {i}: {rs:?}");
        }
    }
    let found = s.find_identity("corp", "sub-1").await.unwrap().unwrap();
    assert_eq!(found.user_id, ids[winner]);
    assert_eq!(s.list_identities(ids[winner]).await.unwrap(), [found]);
    assert!(s.list_identities(ids[1 - winner]).await.unwrap().is_empty());
    // The same user at the same provider with another subject: refused.
    let again = s
        .link_identity(link("corp", "sub-2", ids[winner]), None, Effects::none())
        .await
        .unwrap();
    assert_eq!(again, LinkOutcome::ProviderInUse);
    // Another provider: fine. A missing or disabled user: no link.
    let other = s
        .link_identity(link("gh", "42", ids[winner]), None, Effects::none())
        .await
        .unwrap();
    assert_eq!(other, LinkOutcome::Linked);
    let ghost = s
        .link_identity(link("gh", "43", Uuid::new_v4()), None, Effects::none())
        .await
        .unwrap();
    assert_eq!(ghost, LinkOutcome::NoUser);
    assert_eq!(s.find_identity("gh", "43").await.unwrap(), None);
}

/// 16 first sign-ins of one identity at once, each bringing its own new
/// account for the same email: one account is created and linked, no
/// other account appears.
pub async fn racing_first_sign_ins_create_one_account(s: Arc<dyn Store>) {
    let st = s.clone();
    let rs: Vec<(Uuid, LinkOutcome)> = race(move |_| {
        let s = st.clone();
        let u = User::new(Uuid::new_v4(), "jit@example.com", "", 1);
        let l = link("corp", "jit", u.id);
        async move {
            (
                u.id,
                s.link_identity(l, Some(u), Effects::none()).await.unwrap(),
            )
        }
    })
    .await;
    let outcomes: Vec<LinkOutcome> = rs.iter().map(|(_, o)| o.clone()).collect();
    assert_eq!(count(&outcomes, LinkOutcome::Linked), 1, "{outcomes:?}");
    assert!(
        outcomes.iter().all(|o| matches!(
            o,
            LinkOutcome::Linked | LinkOutcome::Taken | LinkOutcome::EmailTaken
        )),
        "{outcomes:?}"
    );
    let winner = rs
        .iter()
        .find(|(_, o)| *o == LinkOutcome::Linked)
        .unwrap()
        .0;
    let by_email = s
        .find_user_by_email("jit@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_email.id, winner);
    assert_eq!(
        s.find_identity("corp", "jit")
            .await
            .unwrap()
            .unwrap()
            .user_id,
        winner
    );
    for (id, _) in rs.iter().filter(|(id, _)| *id != winner) {
        assert_eq!(
            s.find_user(*id).await.unwrap(),
            None,
            "a loser's account exists"
        );
    }
}

/// An account with no password and no passkey keeps its last identity;
/// with a second one either can go; an account with a password can drop
/// its only identity. Racing unlinks of the last two leave one.
pub async fn the_last_way_to_sign_in_cannot_be_unlinked(s: Arc<dyn Store>) {
    let fed = User::new(Uuid::new_v4(), "fed-only@example.com", "", 1);
    let r = s
        .link_identity(
            link("corp", "f1", fed.id),
            Some(fed.clone()),
            Effects::none(),
        )
        .await
        .unwrap();
    assert_eq!(r, LinkOutcome::Linked);
    assert_eq!(
        s.unlink_identity(fed.id, "corp", Effects::none())
            .await
            .unwrap(),
        UnlinkOutcome::LastMethod
    );
    assert_eq!(
        s.unlink_identity(fed.id, "nope", Effects::none())
            .await
            .unwrap(),
        UnlinkOutcome::NotLinked
    );
    assert_eq!(
        s.link_identity(link("gh", "f1", fed.id), None, Effects::none())
            .await
            .unwrap(),
        LinkOutcome::Linked
    );
    // Both unlinked at once: one goes, the other is the last and stays.
    let st = s.clone();
    let rs: Vec<UnlinkOutcome> = race(move |i| {
        let s = st.clone();
        let p = if i % 2 == 0 { "corp" } else { "gh" };
        async move { s.unlink_identity(fed.id, p, Effects::none()).await.unwrap() }
    })
    .await;
    let unlinked = rs
        .iter()
        .filter(|r| matches!(r, UnlinkOutcome::Unlinked(_)))
        .count();
    assert_eq!(unlinked, 1, "{rs:?}");
    assert_eq!(s.list_identities(fed.id).await.unwrap().len(), 1);

    let local = user("local@example.com");
    s.create_user(local.clone(), None).await.unwrap();
    s.link_identity(link("corp", "l1", local.id), None, Effects::none())
        .await
        .unwrap();
    assert!(matches!(
        s.unlink_identity(local.id, "corp", Effects::none()).await.unwrap(),
        UnlinkOutcome::Unlinked(l) if l.subject == "l1"
    ));
    assert_eq!(s.find_identity("corp", "l1").await.unwrap(), None);
    // Unlinked, the identity may be linked again (to anyone).
    assert_eq!(
        s.link_identity(link("corp", "l1", local.id), None, Effects::none())
            .await
            .unwrap(),
        LinkOutcome::Linked
    );
}

/// Links are part of a copy (backup, restore, `storage migrate`), both
/// ways, and of a snapshot; a page walk visits each once.
pub async fn identities_survive_a_copy(s: Arc<dyn Store>) {
    use portcullis::store::copy::copy_all;
    let u = user("copy-fed@example.com");
    s.create_user(u.clone(), None).await.unwrap();
    for (p, sub) in [("corp", "c/1"), ("gh", "7"), ("okta", "x y")] {
        s.link_identity(link(p, sub, u.id), None, Effects::none())
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let t = portcullis::store::sled_store::SledStore::open(&dir.path().join("db")).unwrap();
    let tallies = copy_all(&*s, &t, |_, _| {}).await.unwrap();
    let n = tallies
        .iter()
        .find(|x| x.kind == RecordKind::Identities)
        .unwrap();
    assert_eq!((n.source, n.copied, n.target), (3, 3, 3), "{tallies:?}");
    assert_eq!(
        t.list_identities(u.id).await.unwrap(),
        s.list_identities(u.id).await.unwrap()
    );
    assert_eq!(
        t.find_identity("corp", "c/1")
            .await
            .unwrap()
            .unwrap()
            .user_id,
        u.id
    );
    let snap = s.snapshot().await.unwrap();
    assert_eq!(
        snap.iter()
            .filter(|r| matches!(r, Record::Identity(_)))
            .count(),
        3
    );
    // Paged one at a time: every link once.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = s.export(RecordKind::Identities, cursor, 1).await.unwrap();
        seen.extend(page.records);
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    // And back again into the source: nothing doubles.
    let back = copy_all(&t, &*s, |_, _| {}).await.unwrap();
    assert!(back.iter().all(|x| x.source == x.target), "{back:?}");
}

macro_rules! federation_conformance {
    ($backend:ident, $make:expr) => {
        mod $backend {
            crate::store::backend_tests!($make;
                one_identity_racing_to_two_users_has_one_winner,
                racing_first_sign_ins_create_one_account,
                the_last_way_to_sign_in_cannot_be_unlinked,
                identities_survive_a_copy,
            );
        }
    };
}

federation_conformance!(sled_backend, crate::store::sled());
federation_conformance!(pg_backend, crate::store::pg().await);

// ----- the account rules of a federated sign-in (accounts::federation),
// on the real account service over a sled store, with the provider's
// verified identity given directly (the protocol is tests/it/federation.rs).

mod rules {
    use std::path::Path;
    use std::sync::Arc;

    use portcullis::accounts::{AccountError, AuthService, Client, Login};
    use portcullis::clock::ManualClock;
    use portcullis::config::{Config, IdentityProvider};
    use portcullis::federation::VerifiedIdentity;
    use portcullis::store::{Store, Totp, User};
    use uuid::Uuid;

    struct Fixture {
        svc: AuthService,
        clock: Arc<ManualClock>,
        _dir: tempfile::TempDir,
    }

    fn fixture(provider_extra: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[server]\ndata_dir = \"{}\"\n[[identity_providers]]\nid = \"corp\"\nkind = \"oidc\"\nissuer = \"https://idp.example.com\"\nclient_id = \"portcullis\"\nclient_secret_env = \"FED_TEST_SECRET\"\n{provider_extra}\n",
            dir.path().display()
        );
        let cfg = Config::from_toml(
            &text,
            &|k| (k == "FED_TEST_SECRET").then(|| "s".to_string()),
            Path::new("."),
        )
        .unwrap();
        let store: Arc<dyn Store> = Arc::new(
            portcullis::store::sled_store::SledStore::open(&dir.path().join("db")).unwrap(),
        );
        let clock = Arc::new(ManualClock::new(1_700_000_000));
        let svc = AuthService::new(Arc::new(cfg), store, clock.clone()).unwrap();
        Fixture {
            svc,
            clock,
            _dir: dir,
        }
    }

    fn provider(f: &Fixture) -> IdentityProvider {
        f.svc.identity_provider("corp").unwrap()
    }

    fn client() -> Client {
        Client {
            ip: "127.0.0.1".parse().unwrap(),
            user_agent: "test".into(),
            request_id: "r".into(),
        }
    }

    fn identity(sub: &str, email: Option<&str>, verified: bool) -> VerifiedIdentity {
        VerifiedIdentity {
            provider: "corp".into(),
            subject: sub.into(),
            email: email.map(String::from),
            email_verified: verified,
            roles: vec![],
            amr: vec![],
            sid: Some("sid-1".into()),
        }
    }

    /// The refusal's code (`account_exists`, …).
    fn refused(r: Result<Login, AccountError>) -> String {
        match r {
            Err(AccountError::Invalid(m)) => m["identity"][0].clone(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn signed(r: Result<Login, AccountError>) -> Box<portcullis::accounts::Signed> {
        match r {
            Ok(Login::Signed(s)) => s,
            other => panic!("expected tokens, got {other:?}"),
        }
    }

    async fn local_user(f: &Fixture, email: &str, verified: bool) -> User {
        let u = User {
            email_verified: verified,
            ..User::new(
                Uuid::new_v4(),
                email,
                "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
                1,
            )
        };
        f.svc.store.create_user(u.clone(), None).await.unwrap();
        u
    }

    /// A first sign-in makes an account with no password, linked; the
    /// next one signs in to the same account; tokens carry amr ["fed"]
    /// and the session remembers the provider's sid.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_first_sign_in_makes_a_linked_account_and_the_next_reuses_it() {
        let f = fixture("");
        let p = provider(&f);
        let a = signed(
            f.svc
                .federated_sign_in(&p, identity("s1", Some("New@Example.com"), true), &client())
                .await,
        );
        assert_eq!(
            a.user.email, "New@example.com",
            "the local part keeps its case"
        );
        assert!(a.user.email_verified);
        assert!(a.user.password_hash.is_empty());
        let claims = f.svc.tokens.verify(&a.access_token).unwrap();
        assert_eq!(claims.amr, ["fed"]);
        let b = signed(
            f.svc
                .federated_sign_in(
                    &p,
                    identity("s1", Some("changed@example.com"), true),
                    &client(),
                )
                .await,
        );
        assert_eq!(b.user.id, a.user.id);
        let sessions = f.svc.store.list_sessions(a.user.id).await.unwrap();
        assert_eq!(sessions.len(), 2);
        assert!(sessions.iter().all(|s| s
            .federation
            .as_ref()
            .is_some_and(|x| x.provider == "corp" && x.sid.as_deref() == Some("sid-1"))));
        // No password works for it.
        let login = f
            .svc
            .login(
                portcullis::accounts::Credentials {
                    email: "New@example.com".into(),
                    password: String::new(),
                    device: None,
                },
                &client(),
            )
            .await;
        assert!(
            matches!(login, Err(AccountError::WrongCredentials)),
            "{login:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sign_up_off_refuses_a_new_identity() {
        let f = fixture("allow_signup = false");
        let p = provider(&f);
        let r = f
            .svc
            .federated_sign_in(&p, identity("s1", Some("x@example.com"), true), &client())
            .await;
        assert_eq!(refused(r), "signup_disabled");
        assert_eq!(
            f.svc
                .store
                .find_user_by_email("x@example.com")
                .await
                .unwrap(),
            None
        );
    }

    /// Linking by email: off → account_exists; on → only when both the
    /// provider and the local account vouch for the email.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn linking_by_email_needs_both_sides_verified() {
        let off = fixture("");
        local_user(&off, "taken@example.com", true).await;
        let r = off
            .svc
            .federated_sign_in(
                &provider(&off),
                identity("s1", Some("taken@example.com"), true),
                &client(),
            )
            .await;
        assert_eq!(refused(r), "account_exists");

        let on = fixture("link_by_email = true");
        let p = provider(&on);
        let unverified_local = local_user(&on, "local-unverified@example.com", false).await;
        let r = on
            .svc
            .federated_sign_in(
                &p,
                identity("s2", Some("local-unverified@example.com"), true),
                &client(),
            )
            .await;
        assert_eq!(refused(r), "email_not_verified");
        let verified_local = local_user(&on, "both@example.com", true).await;
        let r = on
            .svc
            .federated_sign_in(
                &p,
                identity("s3", Some("both@example.com"), false),
                &client(),
            )
            .await;
        assert_eq!(
            refused(r),
            "email_not_verified",
            "the provider did not vouch"
        );
        let s = signed(
            on.svc
                .federated_sign_in(
                    &p,
                    identity("s4", Some("both@example.com"), true),
                    &client(),
                )
                .await,
        );
        assert_eq!(s.user.id, verified_local.id);
        assert_eq!(
            on.svc
                .store
                .find_identity("corp", "s4")
                .await
                .unwrap()
                .unwrap()
                .user_id,
            verified_local.id
        );
        assert!(on
            .svc
            .store
            .list_identities(unverified_local.id)
            .await
            .unwrap()
            .is_empty());
    }

    /// Roles follow role_map at every sign-in; unmapped values and the
    /// gateway's own roles are left alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn roles_are_mapped_and_refreshed_at_every_sign_in() {
        let f = fixture(
            "roles_claim = \"groups\"\nrole_map = { admins = \"admin\", ops = \"operator\" }",
        );
        let p = provider(&f);
        let mut id = identity("s1", Some("r@example.com"), true);
        id.roles = vec!["admin".into(), "operator".into()];
        let s = signed(f.svc.federated_sign_in(&p, id.clone(), &client()).await);
        let mut roles = s.user.roles.clone();
        roles.sort();
        assert_eq!(roles, ["admin", "operator"]);
        f.svc
            .change_user(
                s.user.id,
                portcullis::store::UserChange::AddRole("local".into()),
                None,
            )
            .await
            .unwrap();
        id.roles = vec!["operator".into()];
        let s = signed(f.svc.federated_sign_in(&p, id, &client()).await);
        let mut roles = s.user.roles.clone();
        roles.sort();
        assert_eq!(roles, ["local", "operator"]);
        let claims = f.svc.tokens.verify(&s.access_token).unwrap();
        assert!(!claims.roles.contains(&"admin".to_string()));
    }

    /// A local TOTP and the provider's MFA: trusted → tokens with "mfa";
    /// not trusted → the TOTP step.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn trust_mfa_decides_between_the_providers_factor_and_totp() {
        for (trust, expect_challenge) in [(true, false), (false, true)] {
            let f = fixture(&format!("trust_mfa = {trust}"));
            let p = provider(&f);
            let mut id = identity("s1", Some("m@example.com"), true);
            id.amr = vec!["pwd".into(), "mfa".into()];
            let first = signed(f.svc.federated_sign_in(&p, id.clone(), &client()).await);
            let claims = f.svc.tokens.verify(&first.access_token).unwrap();
            if trust {
                assert_eq!(claims.amr, ["fed", "mfa"]);
            } else {
                assert_eq!(claims.amr, ["fed"]);
            }
            // The account turns TOTP on.
            let mut u = first.user.clone();
            u.totp = Some(Totp {
                secret: "sealed".into(),
                confirmed: true,
                last_step: 0,
            });
            f.svc
                .store
                .import(vec![portcullis::store::Record::User(u)])
                .await
                .unwrap();
            let r = f.svc.federated_sign_in(&p, id, &client()).await;
            assert_eq!(
                matches!(r, Ok(Login::MfaChallenge { .. })),
                expect_challenge,
                "trust_mfa = {trust}: {r:?}"
            );
        }
    }

    /// The login_code of code mode: opaque (random, no grant in it), works
    /// once, and not after 60 s.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_login_code_works_once_and_expires() {
        let f = fixture("");
        let code_for = |sub: &'static str| {
            let f = &f;
            async move {
                f.svc
                    .federated_login_code(
                        &provider(f),
                        identity(sub, Some("c@example.com"), true),
                        &client(),
                    )
                    .await
                    .unwrap()
            }
        };
        let code = code_for("s1").await;
        assert!(
            code.len() >= 43
                && !code.contains('.')
                && !code.starts_with("eyJ")
                && code
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "an opaque random code: {code}"
        );
        assert!(matches!(
            f.svc.exchange_login_code(&code, &client()).await,
            Ok(Login::Signed(_))
        ));
        assert!(matches!(
            f.svc.exchange_login_code(&code, &client()).await,
            Err(AccountError::BadSessionToken)
        ));
        // Unknown and expired codes.
        let unknown = "A".repeat(code.len());
        assert!(matches!(
            f.svc.exchange_login_code(&unknown, &client()).await,
            Err(AccountError::BadSessionToken)
        ));
        let late = code_for("s1").await;
        f.clock.advance(60);
        assert!(matches!(
            f.svc.exchange_login_code(&late, &client()).await,
            Err(AccountError::BadSessionToken)
        ));
    }
}

/// Every key of `[[identity_providers]]` (the file model in
/// src/config/providers.rs) is in docs/configuration.md, and the README
/// has the section the issue asks for.
#[test]
fn every_identity_provider_key_is_documented() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(root.join("src/config/file.rs")).unwrap();
    let doc = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let start = src.find("pub struct IdentityProviderFile {").unwrap();
    let body = &src[start..start + src[start..].find("\n}").unwrap()];
    let keys: Vec<&str> = body
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub "))
        .filter_map(|l| l.split(':').next())
        .filter(|k| !k.contains(' '))
        .collect();
    assert!(keys.len() >= 20, "{keys:?}");
    for k in keys {
        let needle = format!("`[[identity_providers]] {k}`");
        assert!(
            doc.contains(&needle),
            "docs/configuration.md lacks {needle}"
        );
    }
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.contains("## Sign in with Google, GitHub or your company's IdP"));
    assert!(readme.contains("https://api.github.com/user"));
}
