//! Micro-benchmarks of the per-request hot path, through the public library
//! API: path normalization, client IP resolution, identity-header filtering,
//! access-token issue/verify, the revocation check against a store holding
//! 100k revoked `jti`s, and (for scale) one argon2id hash/verify with the
//! default parameters.
//!
//! Run: `cargo bench --bench hot_path` (about 1.5 minutes in total).

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use uuid::Uuid;

use portcullis::accounts::password::Hasher;
use portcullis::clock::{Clock, SystemClock};
use portcullis::store::sled_store::SledStore;
use portcullis::store::{Revocation, Store};
use portcullis::tokens::jwt::TokenService;
use portcullis::tokens::revocation::Revocations;
use portcullis::Config;

fn default_config() -> Config {
    Config::from_toml("", &|_| None, Path::new("."))
        .unwrap_or_else(|e| panic!("default config invalid: {e}"))
}

fn bench_path(c: &mut Criterion) {
    let cases: &[(&str, &str)] = &[
        ("root", "/"),
        ("typical", "/api/v1/items/42"),
        (
            "typical_long",
            "/api/v1/users/5f0c7a1e-2b1d-4c55-9a51-3a2f1d9e7b10/orders/2024/items",
        ),
        ("unreserved_escapes", "/api/%7Euser/%61%62%63/file%2Ename"),
        ("dot_segments", "/a/./b/../c//d/./e/../../f/"),
        ("hostile_traversal", "/public/../../../etc/passwd"),
        ("hostile_encoded_slash", "/public/..%2F..%2Fadmin"),
        ("hostile_nul", "/public/file%00.txt"),
        ("hostile_backslash", "/public/..\\admin"),
        ("hostile_dot_param", "/public/..;/admin/secret"),
        (
            "hostile_long",
            &*Box::leak("/a/./b/../".repeat(200).into_boxed_str()),
        ),
    ];
    let mut g = c.benchmark_group("path_normalize");
    g.sample_size(50)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(800));
    for (name, p) in cases {
        g.throughput(Throughput::Bytes(p.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), p, |b, p| {
            b.iter(|| black_box(portcullis::proxy::path::normalize(black_box(p))))
        });
    }
    g.finish();
}

fn bench_client_ip(c: &mut Criterion) {
    let trusted: Vec<IpNet> = vec![
        "10.0.0.0/8".parse().unwrap(),
        "127.0.0.1/32".parse().unwrap(),
    ];
    let peer_untrusted: IpAddr = "203.0.113.9".parse().unwrap();
    let peer_trusted: IpAddr = "10.1.2.3".parse().unwrap();
    let empty = HeaderMap::new();
    let mut xff = HeaderMap::new();
    xff.insert(
        "x-forwarded-for",
        HeaderValue::from_static("198.51.100.7, 10.9.9.9, 10.1.1.1"),
    );
    let mut fwd = HeaderMap::new();
    fwd.insert(
        "forwarded",
        HeaderValue::from_static("for=198.51.100.7;proto=https, for=10.9.9.9"),
    );
    let mut long = HeaderMap::new();
    let chain = (0..64)
        .map(|i| format!("10.0.{}.{}", i / 250, i % 250))
        .collect::<Vec<_>>()
        .join(", ");
    long.insert("x-forwarded-for", HeaderValue::from_str(&chain).unwrap());

    let mut g = c.benchmark_group("client_ip");
    g.sample_size(50)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(800));
    g.bench_function("no_trusted_proxies", |b| {
        b.iter(|| {
            portcullis::proxy::client_ip::client_ip(
                black_box(peer_untrusted),
                black_box(&xff),
                black_box(&[]),
                portcullis::config::ClientIpHeader::XForwardedFor,
            )
        })
    });
    g.bench_function("untrusted_peer", |b| {
        b.iter(|| {
            portcullis::proxy::client_ip::client_ip(
                black_box(peer_untrusted),
                black_box(&xff),
                black_box(&trusted),
                portcullis::config::ClientIpHeader::XForwardedFor,
            )
        })
    });
    g.bench_function("trusted_peer_no_header", |b| {
        b.iter(|| {
            portcullis::proxy::client_ip::client_ip(
                black_box(peer_trusted),
                black_box(&empty),
                black_box(&trusted),
                portcullis::config::ClientIpHeader::XForwardedFor,
            )
        })
    });
    g.bench_function("trusted_peer_xff_3_hops", |b| {
        b.iter(|| {
            portcullis::proxy::client_ip::client_ip(
                black_box(peer_trusted),
                black_box(&xff),
                black_box(&trusted),
                portcullis::config::ClientIpHeader::XForwardedFor,
            )
        })
    });
    g.bench_function("trusted_peer_forwarded", |b| {
        b.iter(|| {
            portcullis::proxy::client_ip::client_ip(
                black_box(peer_trusted),
                black_box(&fwd),
                black_box(&trusted),
                portcullis::config::ClientIpHeader::Forwarded,
            )
        })
    });
    g.bench_function("trusted_peer_xff_64_hops", |b| {
        b.iter(|| {
            portcullis::proxy::client_ip::client_ip(
                black_box(peer_trusted),
                black_box(&long),
                black_box(&trusted),
                portcullis::config::ClientIpHeader::XForwardedFor,
            )
        })
    });
    g.finish();
}

fn bench_headers(c: &mut Criterion) {
    // A typical browser request's header names plus spoofing attempts.
    let names = [
        "host",
        "user-agent",
        "accept",
        "accept-language",
        "accept-encoding",
        "authorization",
        "cookie",
        "x-request-id",
        "X-User-Id",
        "x_user_email",
        "X-USER-ROLES",
        "x-username",
    ];
    let mut g = c.benchmark_group("identity_header");
    g.sample_size(50)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(800));
    g.throughput(Throughput::Elements(names.len() as u64));
    g.bench_function("12_header_names", |b| {
        b.iter(|| {
            let mut n = 0;
            for name in black_box(&names) {
                if portcullis::proxy::headers::is_identity_header(name) {
                    n += 1;
                }
            }
            n
        })
    });
    g.finish();
}

fn bench_tokens_and_revocation(c: &mut Criterion) {
    let cfg = default_config();
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let keys = portcullis::tokens::keys::load(&cfg.tokens, dir.path(), clock.now()).unwrap();
    let tokens = TokenService::new(keys, cfg.tokens.clone(), clock.clone());
    let user = Uuid::new_v4();
    let sid = Uuid::new_v4();
    let roles = vec!["user".to_string(), "ops".to_string()];
    let (token, claims) = tokens
        .issue(
            &user,
            "alice@example.com",
            &roles,
            &sid,
            &["pwd".to_string()],
        )
        .unwrap();
    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();

    let mut g = c.benchmark_group("token");
    g.sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.bench_function("issue_hs256", |b| {
        b.iter(|| {
            tokens
                .issue(black_box(&user), "alice@example.com", &roles, &sid, &[])
                .unwrap()
        })
    });
    g.bench_function("verify_hs256_valid", |b| {
        b.iter(|| tokens.verify(black_box(&token)).unwrap())
    });
    g.bench_function("verify_hs256_bad_signature", |b| {
        b.iter(|| tokens.verify(black_box(&tampered)).unwrap_err())
    });
    g.bench_function("verify_garbage", |b| {
        b.iter(|| tokens.verify(black_box("not.a.jwt")).unwrap_err())
    });
    g.finish();

    // Revocation check with 100k revoked jtis, 100k revoked sessions and
    // 100k user cutoffs, written to and loaded from a real sled store.
    let store_dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(&store_dir.path().join("db")).unwrap());
    let exp = clock.now() + 3600;
    let revoked: Vec<Revocation> = (0..100_000)
        .flat_map(|_| {
            [
                Revocation::Token(Uuid::new_v4(), exp),
                Revocation::Session(Uuid::new_v4(), exp),
                Revocation::Cutoff(Uuid::new_v4(), clock.now() - 10),
            ]
        })
        .collect();
    let Revocation::Token(some_revoked, _) = revoked[150_000] else {
        unreachable!()
    };
    let store: Arc<dyn Store> = store;
    let auth_store = store.clone();
    let loaded = portcullis::store::block_on(async move {
        for chunk in revoked.chunks(30_000) {
            store.revoke(chunk.to_vec()).await.unwrap();
        }
        store.list_revocations().await.unwrap()
    })
    .unwrap();
    let revs = Revocations::new(&loaded);
    assert_eq!(revs.len(), 200_000);
    let live = claims.clone();
    let mut dead = claims.clone();
    dead.jti = some_revoked.to_string();
    assert!(!revs.is_revoked(&live));
    assert!(revs.is_revoked(&dead));

    let mut g = c.benchmark_group("revocation_100k_each_kind");
    g.sample_size(50)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    g.bench_function("is_revoked_miss", |b| {
        b.iter(|| revs.is_revoked(black_box(&live)))
    });
    g.bench_function("is_revoked_hit", |b| {
        b.iter(|| revs.is_revoked(black_box(&dead)))
    });
    g.finish();

    // The whole bearer check as the proxy does it: the function the proxy
    // calls (`AuthService::authenticate`) on the request's header map, so
    // the Authorization header parsing, verify, the revocation maps (the
    // same 100k of each kind, loaded from the store) and the metrics update.
    let auth_cfg = Config::from_toml(
        &format!("[server]\ndata_dir = \"{}\"\n", dir.path().display()),
        &|_| None,
        Path::new("."),
    )
    .unwrap();
    let auth =
        portcullis::accounts::AuthService::new(Arc::new(auth_cfg), auth_store, clock.clone())
            .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("bench.local"));
    headers.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    assert!(auth.authenticate(&headers).is_ok());
    let mut g = c.benchmark_group("bearer_check");
    g.sample_size(50)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    g.bench_function("authenticate_headers_100k", |b| {
        b.iter(|| auth.authenticate(black_box(&headers)).unwrap())
    });
    g.finish();
}

fn bench_argon2(c: &mut Criterion) {
    let cfg = default_config();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let hasher = rt.block_on(async { Hasher::new(&cfg.passwords) }).unwrap();
    let pw = "correct horse battery staple";
    let hash = rt.block_on(hasher.hash(pw)).unwrap();

    let mut g = c.benchmark_group("argon2id_default");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4));
    let p = &cfg.passwords;
    let label = format!(
        "m{}_t{}_p{}",
        p.argon2_memory_kib, p.argon2_iterations, p.argon2_parallelism
    );
    g.bench_function(BenchmarkId::new("hash", &label), |b| {
        b.iter(|| rt.block_on(hasher.hash(black_box(pw))).unwrap())
    });
    g.bench_function(BenchmarkId::new("verify", &label), |b| {
        b.iter(|| {
            assert!(rt
                .block_on(hasher.verify(black_box(pw), black_box(&hash)))
                .unwrap())
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = bench_path, bench_client_ip, bench_headers, bench_tokens_and_revocation, bench_argon2
}
criterion_main!(benches);
