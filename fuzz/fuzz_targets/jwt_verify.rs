//! JWT parse and verify. Mode 0: arbitrary bytes as the token. Mode 1: an
//! arbitrary header and payload, correctly HS256-signed with the gateway's
//! key, so the fuzzer reaches the claim checks. Never a panic; a token that
//! passes has the required `typ`, `alg` and UUID `sub`/`sid`.
#![no_main]
use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use portcullis::clock::{Clock, ManualClock};
use portcullis::tokens::{jwt::TokenService, keys};

const SECRET: &str = "fuzz-secret-0123456789-0123456789-abcdef";

fn service() -> &'static TokenService {
    static S: OnceLock<(TokenService, tempfile::TempDir)> = OnceLock::new();
    &S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!("[server]\ndata_dir = \"{}\"\n", dir.path().display());
        let env = |k: &str| (k == "PORTCULLIS_JWT_SECRET").then(|| SECRET.to_string());
        let cfg = portcullis::Config::from_toml(&toml, &env, std::path::Path::new(".")).unwrap();
        let clock = Arc::new(ManualClock::starting_now());
        let keys = keys::load(&cfg.tokens, &cfg.server.data_dir, clock.now()).unwrap();
        (TokenService::new(keys, cfg.tokens.clone(), clock), dir)
    })
    .0
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let cut = rest.iter().position(|b| *b == 0xff).unwrap_or(rest.len());
        let (h, p) = rest.split_at(cut);
        let p = p.get(1..).unwrap_or_default();
        let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(h), URL_SAFE_NO_PAD.encode(p));
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    };
    if let Ok(c) = service().verify(&token) {
        assert!(uuid::Uuid::parse_str(&c.sub).is_ok());
        assert!(uuid::Uuid::parse_str(&c.sid).is_ok());
        let header = token.split('.').next().unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        assert_eq!(header["alg"], "HS256", "{header}");
    }
});
