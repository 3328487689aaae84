//! `Config::from_toml` on arbitrary text: an error or a config, never a
//! panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = portcullis::Config::from_toml(text, &|_| None, std::path::Path::new("."));
});
