//! The path normalizer: never panics; what it accepts is absolute, has no
//! `.`/`..`/empty segment, no `;`, and normalizing it again changes nothing.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::proxy::path::normalize_request;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(n) = normalize_request(raw) else {
        return;
    };
    let p = &n.path;
    assert!(p.starts_with('/'), "{raw:?} -> {p:?}");
    assert!(!p.contains("//"), "{raw:?} -> {p:?}");
    assert!(!p.contains(';'), "{raw:?} -> {p:?}");
    assert!(!p.contains('\\'), "{raw:?} -> {p:?}");
    for seg in p.split('/') {
        assert!(seg != ".." && seg != ".", "{raw:?} -> {p:?}");
    }
    let again = normalize_request(p).unwrap_or_else(|e| panic!("{raw:?} -> {p:?} -> {e}"));
    assert_eq!(&again.path, p, "not idempotent for {raw:?}");
    assert!(!again.had_params);
});
