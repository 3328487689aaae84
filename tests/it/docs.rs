//! The docs against the code: every key of the config file model
//! (`src/config/file.rs`) is in `docs/configuration.md`, and every
//! operation of the OpenAPI document is in `docs/api.md`.

use std::collections::BTreeSet;
use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// `pub name: Type` fields of `pub struct name { … }` in `src`.
fn fields<'a>(src: &'a str, name: &str) -> Vec<(&'a str, &'a str)> {
    let start = src
        .find(&format!("pub struct {name} {{"))
        .unwrap_or_else(|| panic!("struct {name} in file.rs"));
    let body = &src[start..];
    let body = &body[..body.find("\n}").unwrap()];
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("pub "))
        .filter_map(|l| l.split_once(": "))
        .map(|(n, t)| (n.trim(), t.trim_end_matches(',').trim()))
        .collect()
}

#[test]
fn every_config_key_is_in_the_configuration_doc() {
    let src = read("src/config/file.rs");
    let doc = read("docs/configuration.md");
    let mut keys = BTreeSet::new();
    for (section, ty) in fields(&src, "FileConfig") {
        let ty = ty
            .trim_start_matches("Option<Vec<")
            .trim_end_matches(">>")
            .to_string();
        for (key, _) in fields(&src, &ty) {
            keys.insert(if section == "routes" {
                format!("`[[routes]] {key}`")
            } else {
                format!("`{section}.{key}`")
            });
        }
    }
    assert!(keys.len() > 50, "{keys:?}");
    let missing: Vec<_> = keys.iter().filter(|k| !doc.contains(k.as_str())).collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks {missing:?}"
    );
}

#[test]
fn every_endpoint_is_in_the_api_doc() {
    let doc = read("docs/api.md");
    let spec: serde_json::Value = serde_json::from_slice(&portcullis::openapi::document()).unwrap();
    let mut n = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let heading = format!("### {} {path}", method.to_uppercase());
            assert!(doc.contains(&heading), "docs/api.md lacks `{heading}`");
            n += 1;
        }
    }
    assert!(n >= 20);
    // Each endpoint section has a curl example.
    assert!(
        doc.matches("curl ").count() >= n,
        "a curl example per endpoint"
    );
}
