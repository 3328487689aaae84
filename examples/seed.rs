//! Fill a gateway's store with many records, for the scale and comparison
//! benchmarks (`benches/scale.sh`, `benches/compare.sh`): users
//! `seed<N>@example.com` (all with the password given, hashed once with the
//! configured argon2 parameters), sessions spread over those users, and
//! revoked access-token ids. Written through `Store::import`, the same path
//! `portcullis storage migrate` uses, in pages.
//!
//! `seed CONFIG USERS SESSIONS REVOCATIONS PASSWORD`
//!
//! Run it while no gateway has the (sled) data dir open.

use std::path::Path;
use std::time::Instant;

use portcullis::store::{Record, Revocation, SessionRecord, User};
use uuid::Uuid;

const PAGE: usize = 5_000;
const DAY: i64 = 86_400;

fn main() {
    if let Err(e) = run() {
        eprintln!("seed: {e}");
        std::process::exit(1);
    }
}

fn arg(args: &[String], i: usize) -> Result<&str, String> {
    args.get(i)
        .map(String::as_str)
        .ok_or_else(|| "usage: seed CONFIG USERS SESSIONS REVOCATIONS PASSWORD".to_string())
}

fn count(args: &[String], i: usize) -> Result<usize, String> {
    arg(args, i)?
        .parse()
        .map_err(|_| format!("argument {i} is not a count"))
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let cfg =
        portcullis::Config::load(Path::new(arg(&args, 1)?), true).map_err(|e| e.to_string())?;
    let (users, sessions, revocations) = (count(&args, 2)?, count(&args, 3)?, count(&args, 4)?);
    let password = arg(&args, 5)?.to_string();
    let store = portcullis::server::open_store(&cfg)?;
    let hasher =
        portcullis::accounts::password::Hasher::new(&cfg.passwords).map_err(|e| e.to_string())?;
    let now = portcullis::clock::Clock::now(&portcullis::clock::SystemClock);
    let started = Instant::now();
    let hash = portcullis::store::block_on(async move { hasher.hash(&password).await })?
        .map_err(|e| e.to_string())?;
    // Ids are drawn up front so sessions can name their users.
    let user_ids: Vec<Uuid> = (0..users).map(|_| Uuid::new_v4()).collect();
    let mut page = Vec::with_capacity(PAGE);
    let mut written = 0usize;
    let mut flush = |page: &mut Vec<Record>| -> Result<(), String> {
        if page.is_empty() {
            return Ok(());
        }
        let records = std::mem::take(page);
        written += records.len();
        let store = store.clone();
        portcullis::store::block_on(async move { store.import(records).await })?
            .map_err(|e| format!("import: {e}"))
    };
    for (i, id) in user_ids.iter().enumerate() {
        page.push(Record::User(User {
            email_verified: true,
            roles: vec!["user".into()],
            ..User::new(*id, format!("seed{i}@example.com"), hash.clone(), now - DAY)
        }));
        if page.len() == PAGE {
            flush(&mut page)?;
        }
    }
    for i in 0..sessions {
        let Some(user_id) = user_ids.get(i % users.max(1)).copied() else {
            return Err("sessions need at least one user".into());
        };
        page.push(Record::Session(SessionRecord {
            id: Uuid::new_v4(),
            user_id,
            generation: 0,
            seed: format!("{:032x}", rand::random::<u128>()),
            rotated_at: now,
            created_at: now,
            last_used_at: now,
            expires_at: now + 30 * DAY,
            ip: "127.0.0.1".into(),
            user_agent: "seed".into(),
            amr: vec!["pwd".into()],
            auth_time: Some(now),
            federation: None,
            client: None,
        }));
        if page.len() == PAGE {
            flush(&mut page)?;
        }
    }
    for _ in 0..revocations {
        page.push(Record::Revocation(Revocation::Token(
            Uuid::new_v4(),
            now + DAY,
        )));
        if page.len() == PAGE {
            flush(&mut page)?;
        }
    }
    flush(&mut page)?;
    let store2 = store.clone();
    portcullis::store::block_on(async move { store2.checkpoint().await })?
        .map_err(|e| format!("checkpoint: {e}"))?;
    println!(
        "seeded {users} users, {sessions} sessions, {revocations} revocations ({written} records) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
