use super::*;

fn user() -> User {
    User {
        roles: vec!["a".into()],
        password_version: 3,
        ..User::new(Uuid::new_v4(), "a@x.org", "h0", 0)
    }
}

fn session(generation: u64) -> SessionRecord {
    SessionRecord {
        id: Uuid::new_v4(),
        user_id: Uuid::new_v4(),
        generation,
        seed: String::new(),
        rotated_at: 100,
        created_at: 0,
        last_used_at: 100,
        expires_at: 1000,
        ip: String::new(),
        user_agent: String::new(),
        amr: vec![],
        auth_time: None,
        federation: None,
        client: None,
    }
}

fn policy(now: i64, grace: u64) -> RefreshPolicy {
    RefreshPolicy {
        now,
        grace_secs: grace,
        idle_secs: 500,
        revoke_until: now + 60,
        reauth_at: None,
    }
}

#[test]
fn set_password_needs_the_version_it_was_decided_on() {
    let u = user();
    let change = |v| UserChange::SetPassword {
        hash: "h1".into(),
        expect_version: v,
        keep: None,
    };
    assert!(matches!(
        apply_user_change(&u, &change(2)),
        Err(StoreError::Conflict)
    ));
    let (n, c) = apply_user_change(&u, &change(3)).unwrap();
    assert_eq!((n.password_version, n.password_hash.as_str()), (4, "h1"));
    assert_eq!(c, Cascade::EVERYTHING);
    // Applied twice with the same expectation: the second is stale.
    assert!(apply_user_change(&n, &change(3)).is_err());
}

#[test]
fn set_password_keeps_one_session_and_refuses_disabled_users() {
    let mut u = user();
    let keep = Uuid::new_v4();
    let change = UserChange::SetPassword {
        hash: "h1".into(),
        expect_version: 3,
        keep: Some(keep),
    };
    let (_, c) = apply_user_change(&u, &change).unwrap();
    assert_eq!(c.end, Some(Sessions::AllBut(keep)));
    assert!(!c.cutoff);
    u.disabled = true;
    assert!(apply_user_change(&u, &change).is_err());
}

#[test]
fn admin_changes_are_idempotent_and_apply_to_the_current_record() {
    let u = user();
    let (u1, c) = apply_user_change(&u, &UserChange::AddRole("b".into())).unwrap();
    assert_eq!(c, Cascade::NONE);
    let (u2, _) = apply_user_change(&u1, &UserChange::AddRole("b".into())).unwrap();
    assert_eq!(u2.roles, ["a", "b"]);
    let (u3, c) = apply_user_change(&u2, &UserChange::RemoveRole("a".into())).unwrap();
    assert_eq!(
        (u3.roles.as_slice(), c),
        (&["b".to_string()][..], Cascade::EVERYTHING)
    );
    let (u4, c) = apply_user_change(&u3, &UserChange::Disable).unwrap();
    assert!(u4.disabled && c == Cascade::EVERYTHING);
    // A profile patch touches only its own field.
    let patch = UserChange::Profile {
        username: Some(Some("neo".into())),
    };
    let (u5, _) = apply_user_change(&u4, &patch).unwrap();
    assert_eq!(u5.username.as_deref(), Some("neo"));
    assert!(u5.disabled);
    assert_eq!(u5.roles, ["b"]);
    let (u6, _) = apply_user_change(&u5, &UserChange::Profile { username: None }).unwrap();
    assert_eq!(u6, u5);
}

#[test]
fn sessions_start_only_for_the_checked_unchanged_user() {
    let mut u = user();
    assert!(check_session_start(&u, 3).is_ok());
    assert!(check_session_start(&u, 2).is_err());
    u.disabled = true;
    assert!(check_session_start(&u, 3).is_err());
}

#[test]
fn rotation_by_generation() {
    let s = session(5);
    let (w, o) = rotate(&s, 5, &policy(200, 0));
    let w = w.unwrap();
    assert_eq!((w.generation, w.rotated_at, w.last_used_at), (6, 200, 200));
    assert_eq!(o, RotateOutcome::Rotated(w.clone()));
    // The previous generation without grace, or any older one, is reuse.
    for old in [4, 5, 0] {
        let (w2, o) = rotate(&w, old, &policy(201, 0));
        assert!(w2.is_none());
        assert!(
            matches!(o, RotateOutcome::Reused(_, ref r) if r == &vec![Revocation::Session(s.id, 261)])
        );
    }
    // A generation that was never issued fails closed.
    assert!(matches!(
        rotate(&w, 9, &policy(201, 0)),
        (None, RotateOutcome::Invalid)
    ));
}

#[test]
fn reauth_rotates_the_current_generation_and_keeps_auth_time_across_refresh() {
    let s = session(5);
    let p = RefreshPolicy {
        reauth_at: Some(150),
        ..policy(150, 0)
    };
    // Whatever generation is named: the current one moves on.
    let (w, o) = rotate(&s, 0, &p);
    let w = w.unwrap();
    assert_eq!((w.generation, w.auth_time), (6, Some(150)));
    assert_eq!(o, RotateOutcome::Rotated(w.clone()));
    // A refresh carries the time on, never renews it.
    let (r, _) = rotate(&w, 6, &policy(160, 0));
    assert_eq!(r.unwrap().auth_time, Some(150));
    // Idle or expired sessions are not revived by it.
    assert!(matches!(
        rotate(
            &s,
            5,
            &RefreshPolicy {
                reauth_at: Some(1000),
                ..policy(1000, 0)
            }
        ),
        (None, RotateOutcome::Invalid)
    ));
}

#[test]
fn use_mfa_spends_a_code_once() {
    let mut u = user();
    u.totp = Some(Totp {
        secret: "s".into(),
        confirmed: true,
        last_step: 10,
    });
    u.recovery_codes = vec!["r1".into()];
    let step = |n| UserChange::UseMfa {
        secret: "s".into(),
        proof: MfaProof::Step(n),
    };
    assert!(apply_user_change(&u, &step(10)).is_err());
    let (u2, c) = apply_user_change(&u, &step(11)).unwrap();
    assert_eq!(
        (u2.totp.as_ref().unwrap().last_step, c),
        (11, Cascade::NONE)
    );
    assert!(apply_user_change(&u2, &step(11)).is_err());
    let rec = UserChange::UseMfa {
        secret: "s".into(),
        proof: MfaProof::Recovery("r1".into()),
    };
    let (u3, _) = apply_user_change(&u2, &rec).unwrap();
    assert!(u3.recovery_codes.is_empty() && u3.totp.is_some());
    assert!(apply_user_change(&u3, &rec).is_err());
}

#[test]
fn grace_hands_out_the_current_generation_only_just_after_rotation() {
    let s = session(5);
    let (w, _) = rotate(&s, 5, &policy(200, 10));
    let w = w.unwrap();
    let (same, o) = rotate(&w, 5, &policy(205, 10));
    assert_eq!(same.as_ref(), Some(&w));
    assert_eq!(o, RotateOutcome::Grace(w.clone()));
    assert!(matches!(
        rotate(&w, 5, &policy(210, 10)).1,
        RotateOutcome::Reused(..)
    ));
    assert!(matches!(
        rotate(&w, 4, &policy(205, 10)).1,
        RotateOutcome::Reused(..)
    ));
}

#[test]
fn expired_and_idle_sessions_are_invalid_and_removed() {
    let s = session(1);
    assert!(matches!(
        rotate(&s, 1, &policy(1000, 0)),
        (None, RotateOutcome::Invalid)
    ));
    assert!(matches!(
        rotate(&s, 1, &policy(600, 0)),
        (None, RotateOutcome::Invalid)
    ));
    assert!(session_is_live(&s, 599, 500));
}

#[test]
fn redeem_rules() {
    let u = user();
    let t = OneTimeToken {
        kind: OneTimeKind::PasswordReset,
        user_id: u.id,
        email: u.email.clone(),
        password_version: 3,
        expires_at: 100,
        issued_seq: 2,
        federation: None,
    };
    let reset = Redeem::ResetPassword { hash: "n".into() };
    assert!(check_redeem(&t, &reset, &u, 2, 50).is_ok());
    assert!(
        check_redeem(&t, &reset, &u, 3, 50).is_err(),
        "not the newest"
    );
    assert!(check_redeem(&t, &reset, &u, 2, 100).is_err(), "expired");
    assert!(
        check_redeem(&t, &Redeem::VerifyEmail, &u, 2, 50).is_err(),
        "wrong kind"
    );
    let (changed, _) = apply_redeem(&u, &reset).unwrap();
    assert!(
        check_redeem(&t, &reset, &changed, 2, 50).is_err(),
        "password changed since"
    );
    let mut disabled = u.clone();
    disabled.disabled = true;
    assert!(check_redeem(&t, &reset, &disabled, 2, 50).is_err());
}

#[test]
fn reservations_bound_evaluated_attempts() {
    let p = LockoutPolicy {
        max_failures: 5,
        window_secs: 60,
        lock_secs: 300,
    };
    let mut c = Counter::default();
    // 20 at once: exactly 5 are let through to be evaluated.
    let granted = (0..20).filter(|_| c.reserve(10, &p).is_ok()).count();
    assert_eq!(granted, 5);
    // Four fail, one never ran: the budget has one attempt left.
    for _ in 0..4 {
        assert!(!c.settle(10, &p, true));
    }
    c.settle(10, &p, false);
    assert!(c.reserve(10, &p).is_ok());
    assert!(c.reserve(10, &p).is_err());
    // The fifth failure locks, for everyone, right password or not.
    assert!(c.settle(11, &p, true));
    assert_eq!(c.reserve(11, &p), Err(300));
    assert_eq!(c.reserve(310, &p), Err(1));
    assert!(c.reserve(311, &p).is_ok());
}

#[test]
fn a_success_gives_back_only_its_own_reservation() {
    let p = LockoutPolicy {
        max_failures: 3,
        window_secs: 60,
        lock_secs: 300,
    };
    let mut c = Counter::default();
    c.reserve(0, &p).unwrap();
    c.settle(0, &p, true);
    c.reserve(0, &p).unwrap();
    c.settle(0, &p, false);
    assert_eq!((c.count, c.pending), (1, 0));
    // The window rolls over.
    c.reserve(0, &p).unwrap();
    c.settle(0, &p, true);
    assert_eq!(c.count, 2);
    c.reserve(60, &p).unwrap();
    assert_eq!((c.count, c.pending), (0, 1));
}

#[test]
fn claims_hold_against_other_senders_until_their_lease_ends() {
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let m = OutboxMessage {
        id: Uuid::new_v4(),
        kind: "k".into(),
        to: "t".into(),
        subject: "s".into(),
        body: "b".into(),
        created_at: 0,
        attempts: 0,
        next_attempt_at: 10,
        failed: false,
        last_error: None,
        failed_at: None,
        claim: None,
        http: None,
    };
    assert!(claim_mail(&m, 9, 120, a, false).is_none(), "not due");
    let claimed = claim_mail(&m, 10, 120, a, false).unwrap();
    assert_eq!(
        claimed.claim,
        Some(crate::store::Claim { by: a, until: 130 })
    );
    // Shared store: held against everyone, a itself included, until 130.
    assert!(claim_mail(&claimed, 129, 120, b, false).is_none());
    assert!(claim_mail(&claimed, 129, 120, a, false).is_none());
    assert!(claim_mail(&claimed, 130, 120, b, false).is_some());
    // One process: another instance's claim is a dead process's.
    assert!(claim_mail(&claimed, 11, 120, b, true).is_some());
    assert!(claim_mail(&claimed, 11, 120, a, true).is_none());
    // A recorded attempt releases the claim.
    let failed = apply_delivery(
        &claimed,
        &Delivery::Failed {
            error: "e".into(),
            retry_at: 40,
            give_up: false,
            now: 11,
        },
    )
    .unwrap();
    assert_eq!((failed.claim, failed.next_attempt_at), (None, 40));

    // Right before each send: renewed only while the claim is a's,
    // even after its lease ran out, as long as nobody took it.
    let renewed = renew_mail_claim(&claimed, 200, 120, a).unwrap();
    assert_eq!(
        renewed.claim,
        Some(crate::store::Claim { by: a, until: 320 })
    );
    assert!(claim_mail(&renewed, 200, 120, b, false).is_none());
    let taken = claim_mail(&claimed, 130, 120, b, false).unwrap();
    assert!(renew_mail_claim(&taken, 131, 120, a).is_none(), "b has it");
    assert!(renew_mail_claim(&failed, 41, 120, a).is_none(), "released");
    // a's failure does not release b's claim; a sent message is gone.
    let fail = Delivery::Failed {
        error: "e".into(),
        retry_at: 40,
        give_up: false,
        now: 131,
    };
    assert!(!delivery_applies(&taken, &fail, a));
    assert!(delivery_applies(&taken, &fail, b));
    assert!(delivery_applies(&m, &fail, a), "unclaimed");
    assert!(delivery_applies(&taken, &Delivery::Sent, a));
}

#[test]
fn a_deferred_entry_is_released_untried_and_old_records_read_as_mail() {
    let a = Uuid::new_v4();
    // A record written before HTTP deliveries existed: a mail.
    let old = r#"{"id":"6f1c7a3e-8d6b-4bb0-9a57-2d4a3c1b0e11","kind":"reset","to":"t@x","subject":"s","body":"b","created_at":0,"attempts":2,"next_attempt_at":10,"failed":false,"last_error":null}"#;
    let m: OutboxMessage = serde_json::from_str(old).unwrap();
    assert!(m.is_mail() && m.http.is_none() && m.claim.is_none());
    assert!(
        !serde_json::to_string(&m).unwrap().contains("http"),
        "a mail is written as before"
    );
    let claimed = claim_mail(&m, 10, 120, a, false).unwrap();
    let later = Delivery::Deferred { until: 50 };
    assert!(delivery_applies(&claimed, &later, a));
    let other = claim_mail(&m, 10, 120, Uuid::new_v4(), false).unwrap();
    assert!(!delivery_applies(&other, &later, a), "not a's to release");
    let d = apply_delivery(&claimed, &later).unwrap();
    assert_eq!((d.claim, d.next_attempt_at, d.attempts), (None, 50, 2));
    assert!(
        claim_mail(&d, 49, 120, a, false).is_none(),
        "not due before 50"
    );
    // Deferring never brings an entry forward.
    let now = apply_delivery(&d, &Delivery::Deferred { until: 20 }).unwrap();
    assert_eq!(now.next_attempt_at, 50);
}

#[test]
fn sweep_predicates() {
    let r = Retention {
        now: 1000,
        idle_secs: 500,
        failed_mail_secs: 100,
        revocation_horizon: 900,
        counter_idle_secs: 3600,
    };
    assert!(session_is_dead(&session(0), &r));
    let id = Uuid::new_v4();
    // Kept while not older than the horizon, whatever `now` is.
    for rev in [Revocation::Token, Revocation::Session, Revocation::Cutoff] {
        assert!(revocation_is_dead(&rev(id, 899), &r));
        assert!(!revocation_is_dead(&rev(id, 900), &r));
        assert!(!revocation_is_dead(&rev(id, 1000), &r));
    }
    assert!(revocation_is_dead(&Revocation::Keys(id, 1000), &r));
    assert!(!revocation_is_dead(&Revocation::Keys(id, 1001), &r));
    let mut m = OutboxMessage {
        id,
        kind: "k".into(),
        to: "t".into(),
        subject: "s".into(),
        body: "b".into(),
        created_at: 0,
        attempts: 0,
        next_attempt_at: 0,
        failed: false,
        last_error: None,
        failed_at: None,
        claim: None,
        http: None,
    };
    assert!(!mail_is_dead(&m, &r), "pending mail is never swept");
    m = apply_delivery(
        &m,
        &Delivery::Failed {
            error: "e".into(),
            retry_at: 0,
            give_up: true,
            now: 950,
        },
    )
    .unwrap();
    assert!(!mail_is_dead(&m, &r));
    m.failed_at = Some(900);
    assert!(mail_is_dead(&m, &r));
}
