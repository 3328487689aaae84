//! The store conformance suite: one set of tests over the `Store` trait,
//! run against every backend (`conformance!` below instantiates it). Each
//! concurrency test has N = 16 tasks race the same operation on one store
//! and checks the outcome a correct backend must give: exactly one winner
//! where one is required, nothing lost where every change must land.

use std::future::Future;
use std::sync::Arc;

use portcullis::store::*;
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use uuid::Uuid;

pub const N: usize = 16;
const TTL: i64 = 1000;

pub fn user(email: &str) -> User {
    User::new(Uuid::new_v4(), email, "hash-0", 1)
}

pub fn session(user: &User, now: i64) -> SessionRecord {
    SessionRecord {
        id: Uuid::new_v4(),
        user_id: user.id,
        generation: 0,
        seed: "seed".into(),
        rotated_at: now,
        created_at: now,
        last_used_at: now,
        expires_at: now + TTL,
        ip: "127.0.0.1".into(),
        user_agent: "test".into(),
        amr: vec!["pwd".into()],
        auth_time: Some(now),
        federation: None,
        client: None,
    }
}

fn stamp(now: i64) -> Stamp {
    Stamp {
        now,
        revoke_until: now + 60,
    }
}

fn policy(now: i64) -> RefreshPolicy {
    RefreshPolicy {
        now,
        grace_secs: 0,
        idle_secs: 500,
        revoke_until: now + 60,
        reauth_at: None,
    }
}

fn mail(to: &str) -> OutboxMessage {
    OutboxMessage {
        id: Uuid::new_v4(),
        kind: "test".into(),
        to: to.into(),
        subject: "s".into(),
        body: "b".into(),
        created_at: 1,
        attempts: 0,
        next_attempt_at: 0,
        failed: false,
        last_error: None,
        failed_at: None,
        claim: None,
        http: None,
    }
}

/// Run `f(i)` for i in 0..N, all released at once; results in order.
pub async fn race<T, F, Fut>(f: F) -> Vec<T>
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

fn conflicts<T>(rs: &[StoreResult<T>]) -> usize {
    rs.iter()
        .filter(|r| matches!(r, Err(StoreError::Conflict)))
        .count()
}

// ----- the suite

pub async fn unique_email_has_one_winner(s: Arc<dyn Store>) {
    let rs = race(|i| {
        let s = s.clone();
        // Every spelling of one address.
        let email = if i % 2 == 0 {
            "Race@Example.com"
        } else {
            "race@example.com"
        };
        let u = user(email);
        async move { s.create_user(u, Some(mail("race@example.com"))).await }
    })
    .await;
    assert_eq!(rs.iter().filter(|r| r.is_ok()).count(), 1);
    assert_eq!(conflicts(&rs), N - 1);
    assert_eq!(s.list_users().await.unwrap().len(), 1);
    // Only the winner's mail was queued with it.
    assert_eq!(s.list_mail().await.unwrap().len(), 1);
    let found = s.find_user_by_email("RACE@example.COM").await.unwrap();
    assert!(found.is_some());
}

pub async fn one_refresh_generation_has_one_winner(s: Arc<dyn Store>) {
    let u = user("rot@example.com");
    s.create_user(u.clone(), None).await.unwrap();
    let sess = session(&u, 100);
    s.create_session(sess.clone(), 0).await.unwrap();
    let rs = race(|_| {
        let s = s.clone();
        async move { s.rotate_refresh(sess.id, 0, policy(110)).await.unwrap() }
    })
    .await;
    let rotated = rs
        .iter()
        .filter(|o| matches!(o, RotateOutcome::Rotated(_)))
        .count();
    let reused = rs
        .iter()
        .filter(|o| matches!(o, RotateOutcome::Reused(..)))
        .count();
    assert_eq!(rotated, 1, "{rs:?}");
    // The first loser detects reuse and ends the session; later ones find
    // no session at all.
    assert!(reused >= 1, "{rs:?}");
    assert!(s.find_session(sess.id).await.unwrap().is_none());
    let revs = s.list_revocations().await.unwrap();
    assert!(
        revs.contains(&Revocation::Session(sess.id, 170)),
        "{revs:?}"
    );
}

/// A re-authentication (CONTRACT 8.6) rotates the session's current
/// generation, whatever was named, and sets `auth_time`; a refresh carries
/// it on and never renews it; parallel reauths and refreshes of one
/// session each rotate once, and the time is the newest reauth's.
pub async fn a_reauth_sets_auth_time_and_a_refresh_keeps_it(s: Arc<dyn Store>) {
    let u = user("reauth@example.com");
    s.create_user(u.clone(), None).await.unwrap();
    let sess = session(&u, 100);
    s.create_session(sess.clone(), 0).await.unwrap();
    let reauth = |at: i64| RefreshPolicy {
        reauth_at: Some(at),
        ..policy(at)
    };
    assert!(matches!(
        s.rotate_refresh(sess.id, 0, policy(110)).await.unwrap(),
        RotateOutcome::Rotated(ref r) if r.generation == 1 && r.auth_time == Some(100)
    ));
    assert!(matches!(
        s.rotate_refresh(sess.id, 0, reauth(120)).await.unwrap(),
        RotateOutcome::Rotated(ref r) if r.generation == 2 && r.auth_time == Some(120)
    ));
    let stored = s.find_session(sess.id).await.unwrap().unwrap();
    assert_eq!((stored.generation, stored.auth_time), (2, Some(120)));
    assert!(matches!(
        s.rotate_refresh(sess.id, 2, policy(130)).await.unwrap(),
        RotateOutcome::Rotated(ref r) if r.generation == 3 && r.auth_time == Some(120)
    ));
    // Eight reauths at once: eight rotations, none lost.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let s = s.clone();
        set.spawn(async move { s.rotate_refresh(sess.id, 0, reauth(140)).await });
    }
    while let Some(r) = set.join_next().await {
        assert!(matches!(r.unwrap().unwrap(), RotateOutcome::Rotated(_)));
    }
    let stored = s.find_session(sess.id).await.unwrap().unwrap();
    assert_eq!((stored.generation, stored.auth_time), (11, Some(140)));
    // A session without the field (older than it) reads as never.
    let mut old = session(&u, 150);
    old.auth_time = None;
    s.create_session(old.clone(), 0).await.unwrap();
    assert_eq!(
        s.find_session(old.id).await.unwrap().unwrap().auth_time,
        None
    );
}

pub async fn rotation_grace_and_reuse(s: Arc<dyn Store>) {
    let u = user("grace@example.com");
    s.create_user(u.clone(), None).await.unwrap();
    let sess = session(&u, 100);
    s.create_session(sess.clone(), 0).await.unwrap();
    let grace = RefreshPolicy {
        grace_secs: 10,
        ..policy(110)
    };
    assert!(matches!(
        s.rotate_refresh(sess.id, 0, grace).await.unwrap(),
        RotateOutcome::Rotated(ref r) if r.generation == 1
    ));
    // Inside the window, the previous generation gets the current one.
    assert!(matches!(
        s.rotate_refresh(sess.id, 0, RefreshPolicy { now: 115, ..grace }).await.unwrap(),
        RotateOutcome::Grace(ref r) if r.generation == 1
    ));
    // Outside it, reuse: the session ends.
    assert!(matches!(
        s.rotate_refresh(sess.id, 0, RefreshPolicy { now: 125, ..grace })
            .await
            .unwrap(),
        RotateOutcome::Reused(..)
    ));
    assert!(matches!(
        s.rotate_refresh(sess.id, 1, policy(126)).await.unwrap(),
        RotateOutcome::Invalid
    ));
    assert!(s.list_sessions(u.id).await.unwrap().is_empty());
}

pub async fn password_change_has_one_winner(s: Arc<dyn Store>) {
    let u = user("pw@example.com");
    s.create_user(u.clone(), None).await.unwrap();
    let keep = session(&u, 100);
    let other = session(&u, 100);
    s.create_session(keep.clone(), 0).await.unwrap();
    s.create_session(other.clone(), 0).await.unwrap();
    let rs = race(|i| {
        let s = s.clone();
        let change = UserChange::SetPassword {
            hash: format!("hash-{i}"),
            expect_version: 0,
            keep: Some(keep.id),
        };
        async move {
            s.change_user(u.id, change, Some(mail("pw@example.com")), stamp(120))
                .await
        }
    })
    .await;
    assert_eq!(rs.iter().filter(|r| r.is_ok()).count(), 1);
    assert_eq!(conflicts(&rs), N - 1);
    let winner = rs.iter().position(|r| r.is_ok()).unwrap();
    let now = s.find_user(u.id).await.unwrap().unwrap();
    assert_eq!(now.password_version, 1);
    assert_eq!(now.password_hash, format!("hash-{winner}"));
    // The kept session lives; the other ended and was revoked, with it.
    let left: Vec<Uuid> = s
        .list_sessions(u.id)
        .await
        .unwrap()
        .iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(left, [keep.id]);
    let changed = rs.into_iter().find_map(Result::ok).unwrap();
    assert_eq!(changed.revoked, [Revocation::Session(other.id, 180)]);
    assert_eq!(s.list_mail().await.unwrap().len(), 1);
}

pub async fn concurrent_admin_and_profile_changes_are_all_kept(s: Arc<dyn Store>) {
    let u = user("roles@example.com");
    s.create_user(u.clone(), None).await.unwrap();
    let rs = race(|i| {
        let s = s.clone();
        let change = if i % 2 == 0 {
            UserChange::AddRole(format!("role-{i}"))
        } else {
            UserChange::Profile {
                username: Some(Some(format!("name-{i}"))),
            }
        };
        async move { s.change_user(u.id, change, None, stamp(100)).await }
    })
    .await;
    assert!(rs.iter().all(|r| r.is_ok()));
    let now = s.find_user(u.id).await.unwrap().unwrap();
    let mut roles = now.roles.clone();
    roles.sort();
    let mut want: Vec<String> = (0..N).step_by(2).map(|i| format!("role-{i}")).collect();
    want.sort();
    assert_eq!(roles, want);
    assert!(now.username.unwrap().starts_with("name-"));
}

pub async fn no_session_survives_a_racing_disable(s: Arc<dyn Store>) {
    let u = user("dis@example.com");
    s.create_user(u.clone(), None).await.unwrap();
    let rs = race(|i| {
        let s = s.clone();
        let u = u.clone();
        async move {
            if i == N / 2 {
                s.change_user(u.id, UserChange::Disable, None, stamp(100))
                    .await
                    .map(|_| ())
            } else {
                s.create_session(session(&u, 100), 0).await.map(|_| ())
            }
        }
    })
    .await;
    assert!(rs[N / 2].is_ok());
    // Sessions created before the disable were ended by it; those after
    // it were refused. None is left, and every one that was created has
    // its revocation.
    assert!(s.list_sessions(u.id).await.unwrap().is_empty());
    let created = rs.iter().filter(|r| r.is_ok()).count() - 1;
    let revs = s.list_revocations().await.unwrap();
    let sessions_revoked = revs
        .iter()
        .filter(|r| matches!(r, Revocation::Session(..)))
        .count();
    assert_eq!(sessions_revoked, created);
    assert!(revs.contains(&Revocation::Cutoff(u.id, 100)));
    assert!(matches!(
        s.create_session(session(&u, 101), 0).await,
        Err(StoreError::Conflict)
    ));
}

pub async fn a_one_time_token_is_redeemed_once(s: Arc<dyn Store>) {
    let u = user("ott@example.com");
    s.create_user(u.clone(), None).await.unwrap();
    let token = OneTimeToken {
        kind: OneTimeKind::PasswordReset,
        user_id: u.id,
        email: u.email.clone(),
        password_version: 0,
        expires_at: 1000,
        issued_seq: 0,
        federation: None,
    };
    let seq = s
        .issue_one_time("h".into(), token.clone(), Some(mail("ott@example.com")))
        .await
        .unwrap();
    assert_eq!(seq, 1);
    assert_eq!(
        s.latest_one_time_seq(u.id, OneTimeKind::PasswordReset)
            .await
            .unwrap(),
        1
    );
    // The wrong kind consumes nothing.
    assert!(matches!(
        s.redeem("h".into(), Redeem::VerifyEmail, None, stamp(100))
            .await,
        Err(StoreError::Conflict)
    ));
    let rs = race(|i| {
        let s = s.clone();
        let r = Redeem::ResetPassword {
            hash: format!("new-{i}"),
        };
        async move { s.redeem("h".into(), r, None, stamp(100)).await }
    })
    .await;
    assert_eq!(rs.iter().filter(|r| r.is_ok()).count(), 1);
    assert_eq!(conflicts(&rs), N - 1);
    assert!(s.find_one_time("h").await.unwrap().is_none());
    assert_eq!(
        s.find_user(u.id).await.unwrap().unwrap().password_version,
        1
    );
}

pub async fn issue_sequences_are_distinct(s: Arc<dyn Store>) {
    let u = user("seq@example.com");
    s.create_user(u.clone(), None).await.unwrap();
    let rs = race(|i| {
        let s = s.clone();
        let t = OneTimeToken {
            kind: OneTimeKind::EmailVerify,
            user_id: u.id,
            email: u.email.clone(),
            password_version: 0,
            expires_at: 1000,
            issued_seq: 0,
            federation: None,
        };
        async move {
            s.issue_one_time(format!("h{i}"), t, Some(mail("seq@example.com")))
                .await
                .unwrap()
        }
    })
    .await;
    let mut seqs = rs.clone();
    seqs.sort();
    assert_eq!(seqs, (1..=N as u64).collect::<Vec<_>>());
    assert_eq!(s.list_mail().await.unwrap().len(), N);
}

pub async fn ending_sessions_races_creating_them(s: Arc<dyn Store>) {
    let u = user("end@example.com");
    s.create_user(u.clone(), None).await.unwrap();
    let first = session(&u, 100);
    s.create_session(first.clone(), 0).await.unwrap();
    let rs = race(|i| {
        let s = s.clone();
        let u = u.clone();
        async move {
            if i == 0 {
                s.end_sessions(u.id, Sessions::All, true, stamp(100))
                    .await
                    .map(|r| r.len())
            } else {
                s.create_session(session(&u, 100), 0).await.map(|_| 0)
            }
        }
    })
    .await;
    // Whatever order they ran in, every session is either listed or ended
    // (revoked), never both, never neither.
    let listed: Vec<Uuid> = s
        .list_sessions(u.id)
        .await
        .unwrap()
        .iter()
        .map(|x| x.id)
        .collect();
    let revoked: Vec<Uuid> = s
        .list_revocations()
        .await
        .unwrap()
        .iter()
        .filter_map(|r| match r {
            Revocation::Session(id, _) => Some(*id),
            _ => None,
        })
        .collect();
    assert!(revoked.contains(&first.id));
    assert!(!listed.contains(&first.id));
    assert!(listed.iter().all(|id| !revoked.contains(id)));
    assert_eq!(listed.len() + revoked.len(), N, "{rs:?}");
    // Ending one session of another user finds nothing.
    let stranger = user("stranger@example.com");
    assert!(s
        .end_sessions(stranger.id, Sessions::One(first.id), false, stamp(100))
        .await
        .unwrap()
        .is_empty());
}

pub async fn delivery_attempts_apply_to_the_current_message(s: Arc<dyn Store>) {
    let m = mail("out@example.com");
    s.enqueue_mail(m.clone()).await.unwrap();
    let rs = race(|i| {
        let s = s.clone();
        async move {
            s.record_delivery(
                m.id,
                Delivery::Failed {
                    error: format!("e{i}"),
                    retry_at: 50,
                    give_up: false,
                    now: 10,
                },
            )
            .await
        }
    })
    .await;
    assert!(rs.iter().all(|r| r.is_ok()));
    let now = s.list_mail().await.unwrap();
    assert_eq!(now[0].attempts, N as u32, "no attempt lost");
    s.record_delivery(m.id, Delivery::Sent).await.unwrap();
    assert!(s.list_mail().await.unwrap().is_empty());
    // A message already gone is no error.
    s.record_delivery(m.id, Delivery::Sent).await.unwrap();
}

pub async fn each_due_message_is_claimed_by_one_sender(s: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for i in 0..40 {
        let mut m = mail(&format!("c{i}@example.com"));
        m.next_attempt_at = if i < 32 { 100 } else { 500 };
        ids.push(m.id);
        s.enqueue_mail(m).await.unwrap();
    }
    let mut failed = mail("gone@example.com");
    failed.failed = true;
    s.enqueue_mail(failed).await.unwrap();
    // 16 senders at once, 4 messages each at most: no due message is handed
    // out twice, and the 8 not yet due and the failed one never. (A sender
    // skips what another is claiming right now, `SKIP LOCKED`, so a round
    // may leave some for the next; whatever is left, a later claim at the
    // same time gets, until every due message went out exactly once.)
    let rs = race(|_| {
        let s = s.clone();
        async move { s.claim_mail(200, 120, 4).await.unwrap() }
    })
    .await;
    assert!(rs.iter().all(|c| c.len() <= 4));
    let mut claimed: Vec<Uuid> = rs.iter().flatten().map(|m| m.id).collect();
    for _ in 0..3 {
        claimed.extend(
            s.claim_mail(200, 120, 100)
                .await
                .unwrap()
                .iter()
                .map(|m| m.id),
        );
    }
    claimed.sort();
    let mut want = ids[..32].to_vec();
    want.sort();
    assert_eq!(claimed, want, "each due message exactly once");
    // Leased: nothing is due again until the lease runs out.
    assert!(s.claim_mail(319, 120, 100).await.unwrap().is_empty());
    assert_eq!(s.claim_mail(320, 120, 100).await.unwrap().len(), 32);
}

pub async fn the_sweep_removes_only_what_is_still_dead(s: Arc<dyn Store>) {
    let u = user("sweep@example.com");
    s.create_user(u.clone(), None).await.unwrap();
    let old = session(&u, 0);
    let young = session(&u, 900);
    s.create_session(old.clone(), 0).await.unwrap();
    s.create_session(young.clone(), 0).await.unwrap();
    let jti = Uuid::new_v4();
    s.revoke(vec![
        Revocation::Token(jti, 40),
        Revocation::Token(Uuid::new_v4(), 2000),
        Revocation::Cutoff(u.id, 10),
    ])
    .await
    .unwrap();
    let mut failed = mail("f@example.com");
    failed.failed = true;
    failed.failed_at = Some(100);
    s.enqueue_mail(failed).await.unwrap();
    s.enqueue_mail(mail("pending@example.com")).await.unwrap();
    s.hit_counter("idle", 1, 60, 100).await.unwrap().unwrap();
    s.hit_counter("fresh", 1, 600, 900).await.unwrap().unwrap();
    let r = Retention {
        now: 1000,
        idle_secs: 500,
        failed_mail_secs: 500,
        revocation_horizon: 50,
        counter_idle_secs: 500,
    };
    // A refresh that lands before the sweep keeps a session alive.
    let report = s.sweep(r).await.unwrap();
    assert_eq!(
        report,
        SweepReport {
            sessions: 1,
            one_time: 0,
            revocations: 1,
            cutoffs: 1,
            mail: 1,
            counters: 1,
        }
    );
    let left: Vec<Uuid> = s
        .list_sessions(u.id)
        .await
        .unwrap()
        .iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(left, [young.id]);
    assert_eq!(s.list_revocations().await.unwrap().len(), 1);
    assert_eq!(s.list_mail().await.unwrap().len(), 1);
    // The fresh counter still counts.
    assert_eq!(
        s.hit_counter("fresh", 1, 600, 1000).await.unwrap(),
        Err(500)
    );
    assert_eq!(s.sweep(r).await.unwrap(), SweepReport::default());
}

/// Issue 20, hole 10: the sweep reaches every expired record however many
/// live ones there are (it used to look at the first 20,000 of each kind
/// only: sled in key order, PostgreSQL in no order, which is the heap's).
/// 40,000 live and 4,000 expired records of each kind, the expired ones
/// written last; within three sweeps every expired one is gone and every
/// live one is still there.
pub async fn the_sweep_reaches_every_expired_record(s: Arc<dyn Store>) {
    const LIVE: usize = 40_000;
    const DEAD: usize = 4_000;
    const NOW: i64 = 1_000_000;
    let u = user("bulk@example.com");
    s.create_user(u.clone(), None).await.unwrap();
    let mut records = Vec::new();
    for i in 0..LIVE + DEAD {
        let dead = i >= LIVE;
        let mut se = session(&u, NOW);
        if dead {
            se.expires_at = NOW - 1;
        }
        records.push(Record::Session(se));
        records.push(Record::OneTimeToken {
            hash: format!("{:032x}", Uuid::new_v4().as_u128()),
            token: OneTimeToken {
                kind: OneTimeKind::EmailVerify,
                user_id: u.id,
                email: u.email.clone(),
                password_version: 0,
                expires_at: if dead { NOW } else { NOW + 1 },
                issued_seq: 1,
                federation: None,
            },
        });
        // Kept while not older than the horizon (NOW - 100).
        records.push(Record::Revocation(Revocation::Token(
            Uuid::new_v4(),
            if dead { NOW - 101 } else { NOW - 100 },
        )));
        let mut m = mail("bulk@example.com");
        if dead {
            m.failed = true;
            m.failed_at = Some(NOW - 500);
        }
        records.push(Record::Mail(m));
        records.push(Record::Counter {
            key: format!("bulk:{i}"),
            counter: Counter {
                window_start: if dead { NOW - 500 } else { NOW - 499 },
                count: 1,
                ..Counter::default()
            },
        });
    }
    for chunk in records.chunks(10_000) {
        s.import(chunk.to_vec()).await.unwrap();
    }
    let kinds = [
        RecordKind::Sessions,
        RecordKind::OneTimeTokens,
        RecordKind::Revocations,
        RecordKind::Mail,
        RecordKind::Counters,
    ];
    for kind in kinds {
        assert_eq!(
            s.count(kind).await.unwrap(),
            (LIVE + DEAD) as u64,
            "{kind:?}"
        );
    }
    let r = Retention {
        now: NOW,
        idle_secs: 500,
        failed_mail_secs: 500,
        revocation_horizon: NOW - 100,
        counter_idle_secs: 500,
    };
    let mut swept = SweepReport::default();
    for _ in 0..3 {
        let one = s.sweep(r).await.unwrap();
        swept.sessions += one.sessions;
        swept.one_time += one.one_time;
        swept.revocations += one.revocations;
        swept.mail += one.mail;
        swept.counters += one.counters;
    }
    for kind in kinds {
        assert_eq!(
            s.count(kind).await.unwrap(),
            LIVE as u64,
            "{kind:?}: every expired record goes, every live one stays"
        );
    }
    assert_eq!(
        swept,
        SweepReport {
            sessions: DEAD,
            one_time: DEAD,
            revocations: DEAD,
            cutoffs: 0,
            mail: DEAD,
            counters: DEAD,
        }
    );
    // Nothing left to do, and nothing live touched by more sweeps.
    for _ in 0..3 {
        assert_eq!(s.sweep(r).await.unwrap(), SweepReport::default());
    }
    assert_eq!(s.count(RecordKind::Sessions).await.unwrap(), LIVE as u64);
}

/// Issue 20, hole 7: the token horizon (the longest lifetime plus leeway
/// ever configured on the store) only grows: a gateway with a shorter
/// lifetime cannot lower it.
pub async fn the_token_horizon_only_grows(s: Arc<dyn Store>) {
    assert_eq!(s.token_horizon(35).await.unwrap(), 35);
    assert_eq!(s.token_horizon(3630).await.unwrap(), 3630);
    assert_eq!(s.token_horizon(35).await.unwrap(), 3630);
    assert_eq!(s.token_horizon(0).await.unwrap(), 3630);
}

fn lockout(max_failures: u32) -> LockoutPolicy {
    LockoutPolicy {
        max_failures,
        window_secs: 60,
        lock_secs: 30,
    }
}

/// Sixteen guesses at once against a budget of five: exactly five are let
/// through to be evaluated; their failures, settled at once, lock the key
/// exactly once; the lock refuses everything (other keys untouched) until
/// a clear lifts it; a success gives back only its own reservation.
pub async fn racing_attempts_share_one_lockout_budget(s: Arc<dyn Store>) {
    let p = lockout(5);
    let rs = race(|_| {
        let s = s.clone();
        async move { s.reserve_attempt("acct", p, 1000, 120).await.unwrap() }
    })
    .await;
    let leases: Vec<Lease> = rs.iter().filter_map(|r| r.clone().ok()).collect();
    assert_eq!(leases.len(), 5, "{rs:?}");
    assert!(rs.iter().all(|r| r.is_ok() || *r == Err(1)), "{rs:?}");
    let mut set = JoinSet::new();
    for l in leases {
        let s = s.clone();
        set.spawn(async move { s.settle_attempt(&l, p, true, 1000).await.unwrap() });
    }
    let mut locked = 0;
    while let Some(r) = set.join_next().await {
        locked += usize::from(r.unwrap());
    }
    assert_eq!(locked, 1, "one failure locks; none is lost");
    assert_eq!(
        s.reserve_attempt("acct", p, 1010, 120).await.unwrap(),
        Err(20)
    );
    assert!(s
        .reserve_attempt("other", p, 1010, 120)
        .await
        .unwrap()
        .is_ok());
    s.clear_counter("acct").await.unwrap();
    let l = s
        .reserve_attempt("acct", p, 1010, 120)
        .await
        .unwrap()
        .unwrap();
    assert!(!s.settle_attempt(&l, p, false, 1010).await.unwrap());
    for i in 0..5 {
        assert!(
            s.reserve_attempt("acct", p, 1010, 120)
                .await
                .unwrap()
                .is_ok(),
            "reservation {i} after the clear"
        );
    }
    assert_eq!(
        s.reserve_attempt("acct", p, 1010, 120).await.unwrap(),
        Err(1)
    );
}

/// Sixteen events at once against a limit of five per window: exactly five
/// are counted, the rest told when the window ends; a new window starts
/// afresh.
pub async fn racing_hits_share_one_rate_budget(s: Arc<dyn Store>) {
    let rs = race(|_| {
        let s = s.clone();
        async move { s.hit_counter("ip:1", 5, 60, 1000).await.unwrap() }
    })
    .await;
    assert_eq!(rs.iter().filter(|r| r.is_ok()).count(), 5, "{rs:?}");
    assert!(rs.iter().all(|r| r.is_ok() || *r == Err(60)), "{rs:?}");
    assert_eq!(s.hit_counter("ip:1", 5, 60, 1030).await.unwrap(), Err(30));
    assert_eq!(s.hit_counter("ip:1", 5, 60, 1060).await.unwrap(), Ok(()));
    assert_eq!(s.hit_counter("ip:2", 0, 60, 1060).await.unwrap(), Ok(()));
    s.ping().await.unwrap();
}

/// A bulk copy (`storage migrate`) carries every kind of record: the copy
/// answers every lookup as the original does, the counts agree, copying
/// again doubles nothing, and a user whose email another account holds is
/// refused with nothing of its page written. The copy goes to a fresh sled
/// store (the gateway tests copy sled to PostgreSQL).
pub async fn every_record_survives_a_copy(s: Arc<dyn Store>) {
    use portcullis::store::copy::copy_all;
    let u = user("copy@example.com");
    s.create_user(u.clone(), Some(mail("copy@example.com")))
        .await
        .unwrap();
    let sess = session(&u, 1000);
    s.create_session(sess.clone(), 0).await.unwrap();
    s.revoke(vec![
        Revocation::Token(Uuid::new_v4(), 2000),
        Revocation::Session(Uuid::new_v4(), 2000),
        Revocation::Cutoff(u.id, 900),
    ])
    .await
    .unwrap();
    let token = OneTimeToken {
        kind: OneTimeKind::PasswordReset,
        user_id: u.id,
        email: u.email.clone(),
        password_version: 0,
        expires_at: 5000,
        issued_seq: 0,
        federation: None,
    };
    s.issue_one_time("h1".into(), token, Some(mail("copy@example.com")))
        .await
        .unwrap();
    s.hit_counter("ip:9", 5, 60, 1000).await.unwrap().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let t = portcullis::store::sled_store::SledStore::open(&dir.path().join("db")).unwrap();
    for round in 0..2 {
        let tallies = copy_all(&*s, &t, |_, _| {}).await.unwrap();
        assert_eq!(tallies.len(), RecordKind::ALL.len());
        for x in &tallies {
            assert_eq!(
                (x.copied, x.target),
                (x.source, x.source),
                "round {round}: {x:?}"
            );
        }
        let n = |k: RecordKind| tallies.iter().find(|x| x.kind == k).unwrap().source;
        assert_eq!(n(RecordKind::Users), 1);
        assert_eq!(n(RecordKind::Sessions), 1);
        assert_eq!(n(RecordKind::Revocations), 3);
        assert_eq!(n(RecordKind::OneTimeTokens), 1);
        assert_eq!(n(RecordKind::OneTimeSeqs), 1);
        assert_eq!(n(RecordKind::Counters), 1);
        assert_eq!(n(RecordKind::Mail), 2);
    }
    // A snapshot (a backup) holds the same records as the paged export.
    let snap = s.snapshot().await.unwrap();
    for kind in RecordKind::ALL {
        assert_eq!(
            snap.iter().filter(|r| r.kind() == kind).count() as u64,
            s.count(kind).await.unwrap(),
            "{kind:?}"
        );
    }
    assert!(snap.contains(&Record::User(u.clone())));
    assert_eq!(
        t.find_user_by_email("COPY@example.com").await.unwrap(),
        Some(u.clone())
    );
    assert_eq!(t.list_sessions(u.id).await.unwrap(), [sess]);
    let sorted = |mut v: Vec<Revocation>| {
        v.sort_by_key(|r| format!("{r:?}"));
        v
    };
    assert_eq!(
        sorted(t.list_revocations().await.unwrap()),
        sorted(s.list_revocations().await.unwrap())
    );
    assert_eq!(
        t.find_one_time("h1").await.unwrap(),
        s.find_one_time("h1").await.unwrap()
    );
    assert_eq!(
        t.latest_one_time_seq(u.id, OneTimeKind::PasswordReset)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        t.hit_counter("ip:9", 1, 60, 1000).await.unwrap(),
        Err(60),
        "the count came along"
    );
    let mut a = t.list_mail().await.unwrap();
    let mut b = s.list_mail().await.unwrap();
    a.sort_by_key(|m| m.id);
    b.sort_by_key(|m| m.id);
    assert_eq!(a, b);

    let squatter = user("Copy@Example.com");
    let r = t
        .import(vec![
            Record::Mail(mail("squat@example.com")),
            Record::User(squatter.clone()),
        ])
        .await;
    assert!(matches!(r, Err(StoreError::Conflict)), "{r:?}");
    assert_eq!(t.find_user(squatter.id).await.unwrap(), None);
    assert_eq!(t.count(RecordKind::Mail).await.unwrap(), 2);
    // And the same the other way: the original takes the copy back.
    let back = copy_all(&t, &*s, |_, _| {}).await.unwrap();
    assert!(back.iter().all(|x| x.source == x.target), "{back:?}");
}

// ----- second factor and API keys (issue 13)

const SEALED: &str = "sealed-secret";

/// A user with TOTP on (last step 100) and two recovery codes.
async fn mfa_user(s: &Arc<dyn Store>, email: &str) -> User {
    let u = user(email);
    s.create_user(u.clone(), None).await.unwrap();
    s.change_user(
        u.id,
        UserChange::TotpEnroll {
            secret: SEALED.into(),
        },
        None,
        stamp(1),
    )
    .await
    .unwrap();
    let c = s
        .change_user(
            u.id,
            UserChange::TotpConfirm {
                secret: SEALED.into(),
                step: 100,
                recovery: vec!["r1".into(), "r2".into()],
            },
            None,
            stamp(1),
        )
        .await
        .unwrap();
    assert!(c.user.totp.as_ref().is_some_and(|t| t.confirmed));
    // Enrolling again while it is on is refused.
    let again = s
        .change_user(
            u.id,
            UserChange::TotpEnroll {
                secret: "other".into(),
            },
            None,
            stamp(1),
        )
        .await;
    assert!(matches!(again, Err(StoreError::Conflict)));
    c.user
}

/// 16 racing uses of one step: exactly one is accepted, and older steps
/// stay refused after it.
pub async fn a_totp_step_is_used_once(s: Arc<dyn Store>) {
    let u = mfa_user(&s, "step@example.com").await;
    let rs = race(|_| {
        let s = s.clone();
        async move {
            s.change_user(
                u.id,
                UserChange::TotpDisable {
                    secret: SEALED.into(),
                    proof: MfaProof::Step(101),
                },
                None,
                stamp(2),
            )
            .await
        }
    })
    .await;
    assert_eq!(rs.iter().filter(|r| r.is_ok()).count(), 1);
    assert_eq!(conflicts(&rs), N - 1);
    let now = s.find_user(u.id).await.unwrap().unwrap();
    assert!(now.totp.is_none() && now.recovery_codes.is_empty());

    // Through redeem (a login's second factor): one step, one winner.
    let u = mfa_user(&s, "step2@example.com").await;
    for i in 0..N {
        let t = OneTimeToken {
            kind: OneTimeKind::MfaLogin,
            user_id: u.id,
            email: u.email.clone(),
            password_version: 0,
            expires_at: 1000,
            issued_seq: 0,
            federation: None,
        };
        s.issue_one_time(format!("mfa-step-{i}"), t, None)
            .await
            .unwrap();
    }
    let rs = race(|i| {
        let s = s.clone();
        async move {
            s.redeem(
                format!("mfa-step-{i}"),
                Redeem::Mfa {
                    secret: SEALED.into(),
                    proof: MfaProof::Step(105),
                },
                None,
                stamp(2),
            )
            .await
        }
    })
    .await;
    assert_eq!(rs.iter().filter(|r| r.is_ok()).count(), 1);
    let after = s.find_user(u.id).await.unwrap().unwrap();
    assert_eq!(after.totp.unwrap().last_step, 105);
    // A refused use consumed nothing: the losers' tokens are still there.
    for (i, r) in rs.iter().enumerate() {
        let present = s
            .find_one_time(&format!("mfa-step-{i}"))
            .await
            .unwrap()
            .is_some();
        assert_eq!(present, r.is_err(), "token {i}");
    }
    // With a token still good, an older step and the same step stay refused.
    let loser = rs.iter().position(|r| r.is_err()).unwrap();
    for step in [104, 105] {
        let r = s
            .redeem(
                format!("mfa-step-{loser}"),
                Redeem::Mfa {
                    secret: SEALED.into(),
                    proof: MfaProof::Step(step),
                },
                None,
                stamp(3),
            )
            .await;
        assert!(matches!(r, Err(StoreError::Conflict)), "step {step}: {r:?}");
    }
    // A newer one passes; a wrong secret never does.
    let r = s
        .redeem(
            format!("mfa-step-{loser}"),
            Redeem::Mfa {
                secret: "another secret".into(),
                proof: MfaProof::Step(106),
            },
            None,
            stamp(3),
        )
        .await;
    assert!(matches!(r, Err(StoreError::Conflict)));
    s.redeem(
        format!("mfa-step-{loser}"),
        Redeem::Mfa {
            secret: SEALED.into(),
            proof: MfaProof::Step(106),
        },
        None,
        stamp(3),
    )
    .await
    .unwrap();
}

/// 16 racing uses of one recovery code: one winner, the code is gone, the
/// other code is untouched.
pub async fn a_recovery_code_is_used_once(s: Arc<dyn Store>) {
    let u = mfa_user(&s, "recovery@example.com").await;
    for i in 0..N {
        let t = OneTimeToken {
            kind: OneTimeKind::MfaLogin,
            user_id: u.id,
            email: u.email.clone(),
            password_version: 0,
            expires_at: 1000,
            issued_seq: 0,
            federation: None,
        };
        s.issue_one_time(format!("mfa-rec-{i}"), t, None)
            .await
            .unwrap();
    }
    let rs = race(|i| {
        let s = s.clone();
        async move {
            s.redeem(
                format!("mfa-rec-{i}"),
                Redeem::Mfa {
                    secret: SEALED.into(),
                    proof: MfaProof::Recovery("r1".into()),
                },
                None,
                stamp(2),
            )
            .await
        }
    })
    .await;
    assert_eq!(rs.iter().filter(|r| r.is_ok()).count(), 1);
    assert_eq!(conflicts(&rs), N - 1);
    let after = s.find_user(u.id).await.unwrap().unwrap();
    assert_eq!(after.recovery_codes, ["r2"]);
}

/// The mfa_token itself is single use, expires, and is bound to the
/// password it was issued under.
pub async fn an_mfa_token_is_redeemed_once_with_a_good_code(s: Arc<dyn Store>) {
    let u = mfa_user(&s, "token@example.com").await;
    let t = OneTimeToken {
        kind: OneTimeKind::MfaLogin,
        user_id: u.id,
        email: u.email.clone(),
        password_version: 0,
        expires_at: 50,
        issued_seq: 0,
        federation: None,
    };
    s.issue_one_time("tok".into(), t.clone(), None)
        .await
        .unwrap();
    let rs = race(|i| {
        let s = s.clone();
        async move {
            s.redeem(
                "tok".into(),
                Redeem::Mfa {
                    secret: SEALED.into(),
                    proof: MfaProof::Step(200 + i as u64),
                },
                None,
                stamp(2),
            )
            .await
        }
    })
    .await;
    assert_eq!(rs.iter().filter(|r| r.is_ok()).count(), 1, "single use");
    s.issue_one_time("late".into(), t.clone(), None)
        .await
        .unwrap();
    let late = s
        .redeem(
            "late".into(),
            Redeem::Mfa {
                secret: SEALED.into(),
                proof: MfaProof::Step(1000),
            },
            None,
            stamp(50),
        )
        .await;
    assert!(matches!(late, Err(StoreError::Conflict)), "expired");
    // Not for an email verification, and not after a password change.
    assert!(matches!(
        s.redeem("late".into(), Redeem::VerifyEmail, None, stamp(2))
            .await,
        Err(StoreError::Conflict)
    ));
    s.change_user(
        u.id,
        UserChange::SetPassword {
            hash: "h".into(),
            expect_version: 0,
            keep: None,
        },
        None,
        stamp(3),
    )
    .await
    .unwrap();
    let stale = s
        .redeem(
            "late".into(),
            Redeem::Mfa {
                secret: SEALED.into(),
                proof: MfaProof::Step(1001),
            },
            None,
            stamp(4),
        )
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict)),
        "password changed"
    );
}

fn api_key(id: u128) -> ApiKey {
    ApiKey {
        id: Uuid::from_u128(id),
        hash: format!("{id:064x}"),
        name: format!("key {id}"),
        scopes: vec!["read".into()],
        created_at: 1,
        expires_at: None,
        rate_per_minute: 0,
        last_used_at: None,
    }
}

/// Key changes land on the current record (16 racing adds are all kept),
/// bump the keys version, and write a `Keys` entry that the other gateways
/// read from the feed; last-use times only move forward; keys travel with
/// their user in a copy.
pub async fn api_key_changes_notify_every_gateway(s: Arc<dyn Store>) {
    let u = user("keys@example.com");
    s.create_user(u.clone(), None).await.unwrap();
    let feed_from = s.revocations_since(0).await.unwrap().map(|(_, seq)| seq);
    let rs = race(|i| {
        let s = s.clone();
        async move {
            s.change_user(
                u.id,
                UserChange::AddApiKey {
                    key: api_key(i as u128 + 1),
                    max: 50,
                },
                None,
                stamp(2),
            )
            .await
        }
    })
    .await;
    assert!(rs.iter().all(|r| r.is_ok()), "{rs:?}");
    assert!(rs
        .iter()
        .all(|r| r.as_ref().unwrap().revoked.contains(&Revocation::Keys(
            u.id,
            2 + portcullis::store::domain::KEYS_NOTICE_SECS
        ))));
    let now = s.find_user(u.id).await.unwrap().unwrap();
    assert_eq!(now.api_keys.len(), N);
    assert_eq!(now.keys_version, N as u64);
    // The cap holds.
    let full = s
        .change_user(
            u.id,
            UserChange::AddApiKey {
                key: api_key(999),
                max: N,
            },
            None,
            stamp(2),
        )
        .await;
    assert!(matches!(full, Err(StoreError::Conflict)));
    // Remove one: gone; again: Conflict.
    s.change_user(
        u.id,
        UserChange::RemoveApiKey(Uuid::from_u128(1)),
        None,
        stamp(3),
    )
    .await
    .unwrap();
    assert!(matches!(
        s.change_user(
            u.id,
            UserChange::RemoveApiKey(Uuid::from_u128(1)),
            None,
            stamp(3)
        )
        .await,
        Err(StoreError::Conflict)
    ));
    // Uses: the newest time wins, whatever order they land in.
    let key = Uuid::from_u128(2);
    let rs = race(|i| {
        let s = s.clone();
        async move {
            s.change_user(
                u.id,
                UserChange::ApiKeysUsed(vec![(key, 100 + i as i64)]),
                None,
                stamp(4),
            )
            .await
        }
    })
    .await;
    assert!(rs.iter().all(|r| r.is_ok()));
    let now = s.find_user(u.id).await.unwrap().unwrap();
    let k = now.api_keys.iter().find(|k| k.id == key).unwrap();
    assert_eq!(k.last_used_at, Some(100 + N as i64 - 1));
    assert_eq!(now.keys_version, N as u64 + 1, "a use changes no key check");
    // Disabling the owner tells every gateway too.
    let c = s
        .change_user(u.id, UserChange::Disable, None, stamp(5))
        .await
        .unwrap();
    assert!(c
        .revoked
        .iter()
        .any(|r| matches!(r, Revocation::Keys(id, _) if *id == u.id)));
    if let Some(from) = feed_from {
        let (revs, _) = s.revocations_since(from).await.unwrap().unwrap();
        assert!(revs
            .iter()
            .any(|r| matches!(r, Revocation::Keys(id, _) if *id == u.id)));
    }
    // The keys (and TOTP state) travel with the user in a copy.
    let page = s.export(RecordKind::Users, None, 100).await.unwrap();
    let copied = page
        .records
        .iter()
        .find_map(|r| match r {
            Record::User(x) if x.id == u.id => Some(x.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(copied.api_keys.len(), N - 1);
    assert_eq!(copied, s.find_user(u.id).await.unwrap().unwrap());
    let revs = s.export(RecordKind::Revocations, None, 1000).await.unwrap();
    assert!(revs
        .records
        .iter()
        .any(|r| matches!(r, Record::Revocation(Revocation::Keys(id, _)) if *id == u.id)));
}

/// Sixteen sign-ins with one passkey assertion (one counter value): one
/// is accepted, the rest are refused; an older counter is refused after a
/// newer one; a counterless authenticator (always 0) is not refused; and
/// a registered credential id is refused a second time.
pub async fn a_passkey_assertion_signs_in_once(s: Arc<dyn Store>) {
    let u = user("passkey@example.com");
    s.create_user(u.clone(), None).await.unwrap();
    let key = |cred: &str, counter: u32| StoredPasskey {
        id: Uuid::new_v4(),
        cred_id: cred.into(),
        name: "key".into(),
        created_at: 1,
        last_used_at: None,
        counter,
        credential: serde_json::json!({ "cred": cred }),
    };
    for (cred, counter) in [("counted", 4), ("counterless", 0)] {
        s.change_user(
            u.id,
            UserChange::AddPasskey {
                passkey: key(cred, counter),
                max: 10,
            },
            None,
            stamp(1),
        )
        .await
        .unwrap();
    }
    let again = s
        .change_user(
            u.id,
            UserChange::AddPasskey {
                passkey: key("counted", 0),
                max: 10,
            },
            None,
            stamp(1),
        )
        .await;
    assert!(matches!(again, Err(StoreError::Conflict)), "{again:?}");
    let use_key = |cred: &'static str, counter: u32| {
        let s = s.clone();
        async move {
            s.change_user(
                u.id,
                UserChange::UsePasskey {
                    cred_id: cred.into(),
                    counter,
                    credential: serde_json::json!({ "cred": cred, "counter": counter }),
                    at: 2,
                },
                None,
                stamp(2),
            )
            .await
        }
    };
    let rs = race(|_| use_key("counted", 5)).await;
    assert_eq!(rs.iter().filter(|r| r.is_ok()).count(), 1);
    assert_eq!(conflicts(&rs), N - 1);
    assert!(matches!(
        use_key("counted", 3).await,
        Err(StoreError::Conflict)
    ));
    assert!(use_key("counted", 6).await.is_ok());
    let rs = race(|_| use_key("counterless", 0)).await;
    assert_eq!(rs.iter().filter(|r| r.is_ok()).count(), N);
    let now = s.find_user(u.id).await.unwrap().unwrap();
    let counted = now
        .passkeys
        .iter()
        .find(|p| p.cred_id == "counted")
        .unwrap();
    assert_eq!(counted.counter, 6);
    assert_eq!(counted.credential["counter"], 6);
    assert_eq!(counted.last_used_at, Some(2));
    // Removed: no more sign-ins with it.
    let id = counted.id;
    s.change_user(u.id, UserChange::RemovePasskey(id), None, stamp(3))
        .await
        .unwrap();
    assert!(matches!(
        use_key("counted", 7).await,
        Err(StoreError::Conflict)
    ));
}

/// Paging through an export with its cursor, two at a time, yields every
/// user exactly once (admin `list` and backups page this way).
pub async fn an_export_pages_through_every_record_once(s: Arc<dyn Store>) {
    let mut ids: Vec<Uuid> = Vec::new();
    for i in 0..7 {
        let u = user(&format!("page{i}@example.com"));
        ids.push(u.id);
        s.create_user(u, None).await.unwrap();
    }
    let seen = export_ids(&s, |c| c).await;
    ids.sort();
    assert_eq!(seen, ids);
}

/// Every user id an export of users gives, two a page; `cursor` may
/// rewrite each cursor before it is handed back.
async fn export_ids(s: &Arc<dyn Store>, cursor: impl Fn(String) -> String) -> Vec<Uuid> {
    let (mut seen, mut after, mut pages) = (Vec::new(), None, 0);
    loop {
        let page = s.export(RecordKind::Users, after, 2).await.unwrap();
        pages += 1;
        assert!(pages <= 5, "the cursor does not advance");
        seen.extend(page.records.iter().map(|r| match r {
            Record::User(u) => u.id,
            other => panic!("not a user: {other:?}"),
        }));
        match page.next {
            Some(c) => after = Some(cursor(c)),
            None => break,
        }
    }
    seen.sort();
    seen
}

/// The console's search: every address under a prefix (case-folded), in
/// address order, page by page, each once; nothing outside the prefix.
pub async fn a_search_by_email_prefix_pages_through_the_matches(s: Arc<dyn Store>) {
    let mut want = Vec::new();
    for i in 0..23 {
        let e = format!("ann{i:02}@a.test");
        s.create_user(user(&e), None).await.unwrap();
        want.push(e);
    }
    for e in ["Ann.Upper@x.test", "anna@b.test"] {
        s.create_user(user(e), None).await.unwrap();
        want.push(e.to_string());
    }
    for e in ["an@x.test", "am@x.test", "bob@a.test", "zed@ann.test"] {
        s.create_user(user(e), None).await.unwrap();
    }
    want.sort_by_key(|e| e.to_lowercase());
    for prefix in ["ann", "ANN"] {
        let mut got = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = s
                .search_users_by_email(prefix, after.as_deref(), 7)
                .await
                .unwrap();
            assert!(page.len() <= 7);
            pages += 1;
            let Some(last) = page.last() else { break };
            after = Some(last.email.clone());
            got.extend(page.into_iter().map(|u| u.email));
            assert!(pages < 10, "paging does not end: {got:?}");
        }
        assert_eq!(got, want, "prefix {prefix}");
    }
    let one = s.search_users_by_email("ann.", None, 10).await.unwrap();
    assert_eq!(
        one.iter().map(|u| u.email.as_str()).collect::<Vec<_>>(),
        ["Ann.Upper@x.test"]
    );
    assert!(s
        .search_users_by_email("zz", None, 10)
        .await
        .unwrap()
        .is_empty());
    // An `after` before the prefix starts at the prefix.
    let from = s.search_users_by_email("bob", Some("a"), 10).await.unwrap();
    assert_eq!(from.len(), 1);
    assert_eq!(from[0].email, "bob@a.test");
    // The empty prefix pages through everyone in address order.
    let all = s.search_users_by_email("", None, 100).await.unwrap();
    assert_eq!(all.len(), want.len() + 4);
    let keys: Vec<String> = all.iter().map(|u| u.email.to_lowercase()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
}

/// Audit events are written with their change, in the same atomic step:
/// N racing changes with an event each give exactly N linked records
/// (sequences 1..=N), a change that fails leaves none; the indexes by user
/// and by time answer; a trim keeps its checkpoint; a copy keeps the chain.
pub async fn audit_events_are_chained_with_their_change(s: Arc<dyn Store>) {
    use portcullis::audit::chain::{Checkpoint, Verifier};
    use portcullis::audit::AuditEvent;
    let u = user("audit@example.com");
    s.create_user(u.clone(), None).await.unwrap();
    let ev = |kind: &str, at: i64, user: Option<Uuid>| AuditEvent {
        kind: kind.into(),
        at,
        user_id: user,
        actor: None,
        ip: "127.0.0.1".into(),
        user_agent: "t".into(),
        request_id: "r".into(),
        outcome: "success".into(),
        data: serde_json::json!({}),
    };
    let results = race(|i| {
        let (s, id) = (s.clone(), u.id);
        let e = ev("user.roles_changed", 100 + i as i64, Some(id));
        async move {
            s.change_user_with(
                id,
                UserChange::AddRole(format!("r{i}")),
                Effects::none().audit(e),
                stamp(100),
            )
            .await
        }
    })
    .await;
    assert!(results.iter().all(|r| r.is_ok()));
    // A change whose precondition fails writes no record.
    let gone = s
        .change_user_with(
            Uuid::new_v4(),
            UserChange::Disable,
            Effects::none().audit(ev("user.disabled", 200, None)),
            stamp(200),
        )
        .await;
    assert!(matches!(gone, Err(StoreError::Conflict)));
    s.append_audit(vec![ev("user.login_failed", 300, None)])
        .await
        .unwrap();
    let all = s.audit_page(0, 1000).await.unwrap();
    let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=N as u64 + 1).collect::<Vec<_>>());
    let mut v = Verifier::new(None);
    for r in &all {
        v.check(r).unwrap();
    }
    let st = s.audit_state().await.unwrap();
    assert_eq!(v.finish(Some(&st.head)).unwrap().seq, N as u64 + 1);
    let mine = s.audit_for_user(u.id, 3).await.unwrap();
    let newest: Vec<u64> = mine.iter().map(|r| r.seq).collect();
    assert_eq!(newest, vec![N as u64, N as u64 - 1, N as u64 - 2]);
    let late = s.audit_since(300, 10).await.unwrap();
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].event.kind, "user.login_failed");

    let dir = tempfile::tempdir().unwrap();
    let t = portcullis::store::sled_store::SledStore::open(&dir.path().join("db")).unwrap();
    portcullis::store::copy::copy_all(&*s, &t, |_, _| {})
        .await
        .unwrap();
    assert_eq!(t.audit_page(0, 1000).await.unwrap(), all);
    assert_eq!(t.audit_state().await.unwrap(), st);

    let cut = &all[4];
    let cp = Checkpoint::sign(b"k", cut.seq, &cut.hash, 400);
    assert_eq!(s.audit_trim(cp.clone()).await.unwrap(), 5);
    let st = s.audit_state().await.unwrap();
    assert_eq!(st.checkpoint, Some(cp.clone()));
    let rest = s.audit_page(0, 1000).await.unwrap();
    assert_eq!(rest.first().map(|r| r.seq), Some(6));
    let mut v = Verifier::new(Some(&cp));
    for r in &rest {
        v.check(r).unwrap();
    }
}

/// Instantiate the suite for one backend: `$make` is an expression (it may
/// `.await`) giving `(Arc<dyn Store>, guard)`; the guard lives as long as
/// the test.
macro_rules! conformance {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;
            backend_tests!($make;
                unique_email_has_one_winner,
                one_refresh_generation_has_one_winner,
                rotation_grace_and_reuse,
                a_reauth_sets_auth_time_and_a_refresh_keeps_it,
                password_change_has_one_winner,
                concurrent_admin_and_profile_changes_are_all_kept,
                no_session_survives_a_racing_disable,
                a_one_time_token_is_redeemed_once,
                issue_sequences_are_distinct,
                ending_sessions_races_creating_them,
                delivery_attempts_apply_to_the_current_message,
                each_due_message_is_claimed_by_one_sender,
                the_sweep_removes_only_what_is_still_dead,
                the_sweep_reaches_every_expired_record,
                the_token_horizon_only_grows,
                racing_attempts_share_one_lockout_budget,
                racing_hits_share_one_rate_budget,
                every_record_survives_a_copy,
                a_totp_step_is_used_once,
                a_recovery_code_is_used_once,
                an_mfa_token_is_redeemed_once_with_a_good_code,
                api_key_changes_notify_every_gateway,
                a_passkey_assertion_signs_in_once,
                an_export_pages_through_every_record_once,
                a_search_by_email_prefix_pages_through_the_matches,
                audit_events_are_chained_with_their_change,
            );
        }
    };
}

/// One test per name on the store `$make` builds (a `(store, guard)`
/// pair): each calls the conformance function of that name in the parent
/// module. Shared with `federation_store.rs`'s conformance tests.
macro_rules! backend_tests {
    ($make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let (store, _guard) = $make;
                super::$name(store).await;
            }
        )*
    };
}
pub(crate) use backend_tests;

/// A sled store in a temporary directory (the guard removes it).
pub fn sled() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = portcullis::store::sled_store::SledStore::open(&dir.path().join("db")).unwrap();
    (Arc::new(store), dir)
}

/// A PostgreSQL store on a database of its own in the test cluster.
pub async fn pg() -> (Arc<dyn Store>, ()) {
    let cluster = crate::common::pg::required();
    let url = cluster.database().await;
    let store = portcullis::store::pg_store::PgStore::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connecting the store: {e}"));
    (Arc::new(store), ())
}

conformance!(sled_backend, sled());

/// sled's export cursor is `SEGMENT:KEY` with the key in lower-case hex
/// (the form earlier versions handed out), and a cursor in upper case is
/// read the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_export_cursors_are_lower_case_hex() {
    let (s, _dir) = sled();
    let mut ids = Vec::new();
    for i in 0..5 {
        let u = user(&format!("cursor{i}@example.com"));
        ids.push(u.id);
        s.create_user(u, None).await.unwrap();
    }
    ids.sort();
    let page = s.export(RecordKind::Users, None, 2).await.unwrap();
    let next = page.next.unwrap();
    let (seg, key) = next.split_once(':').unwrap();
    assert!(seg.bytes().all(|b| b.is_ascii_digit()), "{next}");
    assert!(
        !key.is_empty() && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{next}"
    );
    assert_eq!(export_ids(&s, |c| c.to_uppercase()).await, ids);
    let bad = s
        .export(RecordKind::Users, Some(format!("{seg}:{key}0")), 2)
        .await;
    assert!(matches!(bad, Err(StoreError::Corrupt(_))), "{bad:?}");
}

/// sled keeps counters in memory and writes them out at each checkpoint:
/// a lock written out survives a reopen; attempts in flight do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_counters_survive_a_reopen_after_a_checkpoint() {
    use portcullis::store::sled_store::SledStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let p = lockout(1);
    {
        let s = SledStore::open(&path).unwrap();
        let l = s
            .reserve_attempt("acct", p, 1000, 120)
            .await
            .unwrap()
            .unwrap();
        assert!(s.settle_attempt(&l, p, true, 1000).await.unwrap());
        s.reserve_attempt("pending", p, 1000, 120)
            .await
            .unwrap()
            .unwrap();
        s.checkpoint().await.unwrap();
    }
    let s = SledStore::open(&path).unwrap();
    assert_eq!(
        s.reserve_attempt("acct", p, 1010, 120).await.unwrap(),
        Err(20)
    );
    assert!(s
        .reserve_attempt("pending", p, 1010, 120)
        .await
        .unwrap()
        .is_ok());
}

/// On a shared store a reservation whose gateway died unsettled holds its
/// place only until its lease ends; a failure settled late still counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_lapsed_reservation_gives_its_place_back() {
    let (s, _guard) = pg().await;
    let p = lockout(1);
    let l = s
        .reserve_attempt("acct", p, 1000, 120)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        s.reserve_attempt("acct", p, 1119, 120).await.unwrap(),
        Err(1)
    );
    let next = s
        .reserve_attempt("acct", p, 1120, 120)
        .await
        .unwrap()
        .unwrap();
    assert!(
        s.settle_attempt(&l, p, true, 1121).await.unwrap(),
        "counted, and it locks"
    );
    assert!(!s.settle_attempt(&next, p, false, 1121).await.unwrap());
    assert_eq!(
        s.reserve_attempt("acct", p, 1121, 120).await.unwrap(),
        Err(30)
    );
}
conformance!(pg_backend, pg().await);

/// Migrations run at every start, under an advisory lock: eight instances
/// connecting to one fresh database at once all succeed, and the schema is
/// applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_migrations_are_idempotent_and_race_free() {
    let cluster = crate::common::pg::required();
    let url = cluster.database().await;
    let mut set = JoinSet::new();
    for _ in 0..8 {
        let url = url.clone();
        set.spawn(async move { portcullis::store::pg_store::PgStore::connect(&url).await });
    }
    let mut stores = Vec::new();
    while let Some(r) = set.join_next().await {
        stores.push(r.unwrap().expect("every instance starts"));
    }
    let u = user("mig@example.com");
    stores[0].create_user(u.clone(), None).await.unwrap();
    // Every instance sees the one schema and the one user.
    for s in &stores {
        assert_eq!(s.list_users().await.unwrap().len(), 1);
    }
    // And starting again later changes nothing.
    let again = portcullis::store::pg_store::PgStore::connect(&url)
        .await
        .unwrap();
    assert_eq!(again.find_user(u.id).await.unwrap(), Some(u));
}

/// Acknowledged means durable, whatever happens next: a change answered
/// `Ok` is there after the process is gone without any further flush. The
/// store is leaked (never dropped, so never closed or flushed again) and
/// the database is read by a second handle after sled's own recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_acknowledged_writes_are_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let u = user("durable@example.com");
    {
        let store = portcullis::store::sled_store::SledStore::open(&path).unwrap();
        store.create_user(u.clone(), None).await.unwrap();
        store
            .change_user(u.id, UserChange::AddRole("kept".into()), None, stamp(1))
            .await
            .unwrap();
        // Copy the files as they are on disk right now, as a crash would
        // leave them, while the store is still open.
        copy_dir(&path, &dir.path().join("crashed"));
        std::mem::forget(store);
    }
    let reopened =
        portcullis::store::sled_store::SledStore::open(&dir.path().join("crashed")).unwrap();
    let found = reopened
        .find_user(u.id)
        .await
        .unwrap()
        .expect("acknowledged user");
    assert_eq!(found.roles, ["kept"]);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

// ----- the sled revocation snapshot (issue 26)

fn revocation_retention(now: i64) -> Retention {
    Retention {
        now,
        idle_secs: 3_600,
        failed_mail_secs: 3_600,
        revocation_horizon: now - 3_600,
        counter_idle_secs: 3_600,
    }
}

fn sorted(mut v: Vec<Revocation>) -> Vec<String> {
    let mut out: Vec<String> = v.drain(..).map(|r| format!("{r:?}")).collect();
    out.sort();
    out
}

/// A start reads the revocation snapshot the sweep wrote plus the store's
/// log after it, never the `revoked` tree whole; a snapshot older than the
/// store is completed from the log, or, once the log after it is trimmed,
/// ignored; a torn or corrupt one, or one of another database, is ignored
/// (the trees are read whole). Every start yields every revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_revocation_snapshot_is_completed_from_the_store_and_ignored_when_unusable() {
    use portcullis::store::sled_store::{RevocationLoad, SledStore, SNAPSHOT_FILE};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let snap = path.join(SNAPSHOT_FILE);
    let now = 1_000_000;
    let user = Uuid::new_v4();
    let first: Vec<Revocation> = (0..50)
        .map(|_| Revocation::Token(Uuid::new_v4(), now + 600))
        .chain([Revocation::Cutoff(user, now)])
        .collect();
    let later: Vec<Revocation> = (0..5)
        .map(|_| Revocation::Session(Uuid::new_v4(), now + 600))
        .chain([Revocation::Cutoff(user, now + 10)])
        .collect();
    let dead = Revocation::Token(Uuid::new_v4(), now - 7_200);
    let reopen = |expect: RevocationLoad| {
        let path = path.clone();
        async move {
            let s = SledStore::open(&path).unwrap();
            let got = s.list_revocations().await.unwrap();
            assert_eq!(s.revocation_load(), Some(expect));
            (s, got)
        }
    };
    {
        let s = SledStore::open(&path).unwrap();
        s.revoke(first.clone()).await.unwrap();
        s.revoke(vec![dead]).await.unwrap();
        s.sweep(revocation_retention(now)).await.unwrap();
        assert!(snap.exists(), "the sweep writes the snapshot");
        s.revoke(later.clone()).await.unwrap();
    }
    // The snapshot (50 tokens and the first cutoff; the dead entry is
    // gone) and the 6 entries logged after it: the later cutoff wins.
    let old_snapshot = std::fs::read(&snap).unwrap();
    let (s, got) = reopen(RevocationLoad::Snapshot {
        entries: 57,
        from_log: 6,
    })
    .await;
    let mut want: Vec<Revocation> = first[..50].to_vec();
    want.extend(later.iter().copied());
    let mut seen = got.clone();
    seen.retain(|r| !matches!(r, Revocation::Cutoff(..)));
    want.retain(|r| !matches!(r, Revocation::Cutoff(..)));
    assert_eq!(sorted(seen), sorted(want.clone()));
    let cutoff = got
        .iter()
        .filter_map(|r| match r {
            Revocation::Cutoff(u, at) if *u == user => Some(*at),
            _ => None,
        })
        .max();
    assert_eq!(cutoff, Some(now + 10));
    // The next sweep takes the log into the snapshot and trims it.
    s.sweep(revocation_retention(now)).await.unwrap();
    drop(s);
    want.push(Revocation::Cutoff(user, now + 10));
    let (s, got) = reopen(RevocationLoad::Snapshot {
        entries: 56,
        from_log: 0,
    })
    .await;
    assert_eq!(sorted(got), sorted(want.clone()));
    drop(s);

    // The first snapshot again: the entries after it are trimmed from the
    // log, so it cannot be completed: ignored.
    std::fs::write(&snap, &old_snapshot).unwrap();
    let (s, got) = reopen(RevocationLoad::FullScan { entries: 56 }).await;
    assert_eq!(sorted(got), sorted(want.clone()));
    s.sweep(revocation_retention(now)).await.unwrap();
    drop(s);
    let good = std::fs::read(&snap).unwrap();

    // Torn (cut short), one byte flipped (in an entry, then in the
    // checksum), and a snapshot of another database: each ignored.
    let mut flipped = good.clone();
    flipped[60] ^= 1;
    let mut bad_sum = good.clone();
    *bad_sum.last_mut().unwrap() ^= 0x80;
    for damaged in [good[..good.len() / 2].to_vec(), flipped, bad_sum] {
        std::fs::write(&snap, &damaged).unwrap();
        let (s, got) = reopen(RevocationLoad::FullScan { entries: 56 }).await;
        assert_eq!(sorted(got), sorted(want.clone()));
        drop(s);
    }
    let other = tempfile::tempdir().unwrap();
    let other_path = other.path().join("db");
    drop(SledStore::open(&other_path).unwrap());
    std::fs::write(other_path.join(SNAPSHOT_FILE), &good).unwrap();
    let s = SledStore::open(&other_path).unwrap();
    assert_eq!(s.list_revocations().await.unwrap(), vec![]);
    assert_eq!(
        s.revocation_load(),
        Some(RevocationLoad::FullScan { entries: 0 })
    );
}

fn find_file(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
        if p.is_dir() {
            if let Some(found) = find_file(&p, name) {
                return Some(found);
            }
        }
    }
    None
}

/// On the real gateway: a token logged out before the maintenance sweep
/// wrote the revocation snapshot and one logged out after it both stay
/// refused across restarts, with the snapshot as written, torn, or
/// corrupt; a session never revoked still passes, so each 401 is the
/// revocation and not the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_stay_refused_across_restarts_whatever_the_snapshot() {
    use crate::common::{Builder, TestGateway};
    use portcullis::store::sled_store::SNAPSHOT_FILE;
    use serde_json::json;
    let mut gw = TestGateway::start_with(Builder {
        extra: "[throttle]\nauth_per_minute = 0\n".into(),
        ..Default::default()
    })
    .await;
    let a = gw.signup("snap-a@example.com").await;
    let b = gw.signup("snap-b@example.com").await;
    let kept = gw.signup("snap-kept@example.com").await;
    let logout = |s: &crate::common::Session| {
        let (access, refresh) = (s.access.clone(), s.refresh.clone());
        let gw = &gw;
        async move {
            let r = gw
                .post(
                    "/auth/logout",
                    json!({ "refresh_token": refresh }),
                    Some(&access),
                )
                .await;
            assert_eq!(r.status, 204, "{r:?}");
        }
    };
    logout(&a).await;
    gw.sweep().await;
    let snap = find_file(&gw.data_dir(), SNAPSHOT_FILE).expect("the sweep wrote the snapshot");
    logout(&b).await;
    let (a, b, kept) = (a.access, b.access, kept.access);
    for damage in ["none", "torn", "flipped"] {
        // Stopped first, so no sweep writes the file meanwhile.
        gw.stop();
        let bytes = std::fs::read(&snap).unwrap();
        match damage {
            "torn" => std::fs::write(&snap, &bytes[..bytes.len() - 10]).unwrap(),
            "flipped" => {
                let mut b = bytes.clone();
                b[45] ^= 0x10;
                std::fs::write(&snap, b).unwrap();
            }
            _ => {}
        }
        gw.restart();
        assert_eq!(gw.get("/", Some(&a)).await.status, 401, "{damage}");
        assert_eq!(gw.get("/", Some(&b)).await.status, 401, "{damage}");
        assert_eq!(gw.get("/", Some(&kept)).await.status, 200, "{damage}");
    }
}

/// sled keeps the ids of API key holders apart, so a start loads the key
/// index from them instead of reading every account (issue 26): a user
/// who gets a key through a change or an import is in it, and stays in it
/// (with no keys left) after removing it and across a reopen; a user who
/// never held one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_lists_the_api_key_holders_and_no_one_else() {
    use portcullis::store::sled_store::SledStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let (plain, changed, mut imported) = (
        user("plain@example.com"),
        user("changed@example.com"),
        user("imported@example.com"),
    );
    imported.api_keys = vec![api_key(7)];
    imported.keys_version = 1;
    {
        let s = SledStore::open(&path).unwrap();
        assert_eq!(s.api_key_holders().await.unwrap(), Some(vec![]));
        s.create_user(plain.clone(), None).await.unwrap();
        s.create_user(changed.clone(), None).await.unwrap();
        s.import(vec![Record::User(imported.clone())])
            .await
            .unwrap();
        let key = api_key(8);
        let id = key.id;
        s.change_user(
            changed.id,
            UserChange::AddApiKey { key, max: 5 },
            None,
            stamp(2),
        )
        .await
        .unwrap();
        s.change_user(changed.id, UserChange::RemoveApiKey(id), None, stamp(3))
            .await
            .unwrap();
    }
    let s = SledStore::open(&path).unwrap();
    let mut held: Vec<(String, usize)> = s
        .api_key_holders()
        .await
        .unwrap()
        .expect("sled keeps the holders apart")
        .into_iter()
        .map(|u| (u.email, u.api_keys.len()))
        .collect();
    held.sort();
    assert_eq!(
        held,
        vec![
            ("changed@example.com".to_string(), 0),
            ("imported@example.com".to_string(), 1)
        ]
    );
}

/// A page sink that, on the first page, creates a user with a mail (a
/// write during the backup), and keeps what it is handed.
struct WritesMeanwhile {
    store: Arc<dyn Store>,
    written: bool,
    got: Vec<Record>,
}

#[async_trait::async_trait]
impl copy::PageSink for WritesMeanwhile {
    async fn page(&mut self, _kind: RecordKind, records: Vec<Record>) -> Result<(), String> {
        if !self.written {
            self.written = true;
            self.store
                .create_user(user("late@example.com"), Some(mail("late@example.com")))
                .await
                .map_err(|e| e.to_string())?;
        }
        self.got.extend(records);
        Ok(())
    }
}

/// Issue 26: on PostgreSQL a streamed backup (`Store::export_all`) reads
/// every page as of one moment (one REPEATABLE READ transaction): a user
/// and its mail written while it runs are in it neither (the mail's kind
/// is read after the write); the store holds them after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_streamed_export_is_of_one_moment() {
    let (s, _guard) = pg().await;
    let u = user("early@example.com");
    s.create_user(u.clone(), Some(mail("early@example.com")))
        .await
        .unwrap();
    let mut sink = WritesMeanwhile {
        store: s.clone(),
        written: false,
        got: Vec::new(),
    };
    s.export_all(1, &mut sink).await.unwrap();
    let of = |k: RecordKind| sink.got.iter().filter(|r| r.kind() == k).count();
    assert_eq!(of(RecordKind::Users), 1, "{:?}", sink.got);
    assert_eq!(of(RecordKind::Mail), 1, "{:?}", sink.got);
    assert!(sink.got.contains(&Record::User(u)));
    assert_eq!(s.count(RecordKind::Users).await.unwrap(), 2);
    assert_eq!(s.count(RecordKind::Mail).await.unwrap(), 2);
}
