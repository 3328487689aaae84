//! Issue 22: linked identities in the store, held to one conformance suite
//! on sled and on PostgreSQL (each case instantiated for both below).
//! Races have N = 16 tasks released together on one store.

use std::future::Future;
use std::sync::Arc;

use portcullis::store::*;
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use uuid::Uuid;

const N: usize = 16;

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

async fn race<T, F, Fut>(f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(N));
    let mut set = JoinSet::new();
    for i in 0..N {
        let (b, fut) = (barrier.clone(), f(i));
        set.spawn(async move {
            b.wait().await;
            (i, fut.await)
        });
    }
    let mut out: Vec<Option<T>> = (0..N).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        let (i, v) = r.unwrap();
        out[i] = Some(v);
    }
    out.into_iter().map(Option::unwrap).collect()
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
        async move { s.link_identity(l, None, None).await.unwrap() }
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
        .link_identity(link("corp", "sub-2", ids[winner]), None, None)
        .await
        .unwrap();
    assert_eq!(again, LinkOutcome::ProviderInUse);
    // Another provider: fine. A missing or disabled user: no link.
    let other = s
        .link_identity(link("gh", "42", ids[winner]), None, None)
        .await
        .unwrap();
    assert_eq!(other, LinkOutcome::Linked);
    let ghost = s
        .link_identity(link("gh", "43", Uuid::new_v4()), None, None)
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
        async move { (u.id, s.link_identity(l, Some(u), None).await.unwrap()) }
    })
    .await;
    let outcomes: Vec<LinkOutcome> = rs.iter().map(|(_, o)| o.clone()).collect();
    assert_eq!(count(&outcomes, LinkOutcome::Linked), 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, LinkOutcome::Linked | LinkOutcome::Taken | LinkOutcome::EmailTaken)),
        "{outcomes:?}"
    );
    let winner = rs.iter().find(|(_, o)| *o == LinkOutcome::Linked).unwrap().0;
    let by_email = s.find_user_by_email("jit@example.com").await.unwrap().unwrap();
    assert_eq!(by_email.id, winner);
    assert_eq!(
        s.find_identity("corp", "jit").await.unwrap().unwrap().user_id,
        winner
    );
    for (id, _) in rs.iter().filter(|(id, _)| *id != winner) {
        assert_eq!(s.find_user(*id).await.unwrap(), None, "a loser's account exists");
    }
}

/// An account with no password and no passkey keeps its last identity;
/// with a second one either can go; an account with a password can drop
/// its only identity. Racing unlinks of the last two leave one.
pub async fn the_last_way_to_sign_in_cannot_be_unlinked(s: Arc<dyn Store>) {
    let fed = User::new(Uuid::new_v4(), "fed-only@example.com", "", 1);
    let r = s
        .link_identity(link("corp", "f1", fed.id), Some(fed.clone()), None)
        .await
        .unwrap();
    assert_eq!(r, LinkOutcome::Linked);
    assert_eq!(
        s.unlink_identity(fed.id, "corp").await.unwrap(),
        UnlinkOutcome::LastMethod
    );
    assert_eq!(
        s.unlink_identity(fed.id, "nope").await.unwrap(),
        UnlinkOutcome::NotLinked
    );
    assert_eq!(
        s.link_identity(link("gh", "f1", fed.id), None, None)
            .await
            .unwrap(),
        LinkOutcome::Linked
    );
    // Both unlinked at once: one goes, the other is the last and stays.
    let st = s.clone();
    let rs: Vec<UnlinkOutcome> = race(move |i| {
        let s = st.clone();
        let p = if i % 2 == 0 { "corp" } else { "gh" };
        async move { s.unlink_identity(fed.id, p).await.unwrap() }
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
    s.link_identity(link("corp", "l1", local.id), None, None)
        .await
        .unwrap();
    assert!(matches!(
        s.unlink_identity(local.id, "corp").await.unwrap(),
        UnlinkOutcome::Unlinked(l) if l.subject == "l1"
    ));
    assert_eq!(s.find_identity("corp", "l1").await.unwrap(), None);
    // Unlinked, the identity may be linked again (to anyone).
    assert_eq!(
        s.link_identity(link("corp", "l1", local.id), None, None)
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
        s.link_identity(link(p, sub, u.id), None, None).await.unwrap();
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
        t.find_identity("corp", "c/1").await.unwrap().unwrap().user_id,
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
            use super::*;
            federation_conformance!(@tests $make;
                one_identity_racing_to_two_users_has_one_winner,
                racing_first_sign_ins_create_one_account,
                the_last_way_to_sign_in_cannot_be_unlinked,
                identities_survive_a_copy,
            );
        }
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let Some((store, _guard)) = $make else {
                    return;
                };
                super::$name(store).await;
            }
        )*
    };
}

fn sled() -> Option<(Arc<dyn Store>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let store = portcullis::store::sled_store::SledStore::open(&dir.path().join("db")).unwrap();
    Some((Arc::new(store), dir))
}

federation_conformance!(sled_backend, sled());
federation_conformance!(pg_backend, crate::store::pg().await);
