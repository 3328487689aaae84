//! Header rules: `is_identity_header` matches its definition (case-
//! insensitive, `_` read as `-`, prefix `x-user-`), and after
//! `strip_for_upstream` no identity-family header is left, whatever the
//! names and whatever the route's settings; nor any `X-API-Key`, nor an
//! `Authorization` that presents an API key.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pingora::http::RequestHeader;
use portcullis::proxy::headers::{
    is_api_key_authorization, is_h2c_upgrade, is_identity_header, strip_for_upstream,
};

fuzz_target!(|data: &[u8]| {
    let flags = data.first().copied().unwrap_or(0);
    let text = String::from_utf8_lossy(data);
    let mut req = RequestHeader::build("GET", b"/", None).unwrap();
    for line in text.split('\n') {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let reference = name
            .to_ascii_lowercase()
            .replace('_', "-")
            .starts_with("x-user-");
        assert_eq!(is_identity_header(name), reference, "{name:?}");
        let _ = req.append_header(name.to_string(), value.trim());
    }
    let _ = is_h2c_upgrade(&req);
    strip_for_upstream(&mut req, flags & 1 == 1, flags & 2 == 2);
    for (k, v) in req.headers.iter() {
        assert!(!is_identity_header(k.as_str()), "{k:?} survived");
        assert!(k.as_str() != "x-api-key", "an API key survived");
        assert!(
            !(k.as_str() == "authorization" && is_api_key_authorization(v.as_bytes())),
            "an API key bearer survived"
        );
    }
});
