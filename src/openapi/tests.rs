use std::collections::BTreeSet;

use super::*;

/// (METHOD, path) of every operation in the document.
fn documented() -> BTreeSet<(String, String)> {
    let doc: serde_json::Value = serde_json::from_slice(&document()).unwrap();
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

/// (METHOD, path) of every arm of the dispatcher in `http/routes.rs`
/// that answers (not the 405 fallbacks): `"/auth/x" if *m == Method::GET`
/// arms, and `p.starts_with("/auth/x/") && *m == Method::DELETE` arms,
/// read as `/auth/x/{id}`. HEAD is served wherever GET is and is not
/// listed.
fn routed() -> BTreeSet<(String, String)> {
    let src = include_str!("../http/routes.rs");
    let start = src
        .find("async fn dispatch")
        .expect("dispatch in http/routes.rs");
    let body = &src[start..];
    let end = body.find("\n    }\n").expect("end of dispatch");
    let body = &body[..end];
    let mut out = BTreeSet::new();
    // The jwks arm matches by `if path == ...` before the match.
    if body.contains("\"/.well-known/jwks.json\"") {
        out.insert(("GET".into(), "/.well-known/jwks.json".into()));
    }
    let methods = |line: &str| -> Vec<String> {
        line.split("Method::")
            .skip(1)
            .map(|s| {
                s.chars()
                    .take_while(|c| c.is_ascii_uppercase())
                    .collect::<String>()
            })
            .filter(|m| m != "HEAD")
            .collect()
    };
    federation::routed(body, &mut out);
    for line in body.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix('"') {
            let Some((path, tail)) = rest.split_once('"') else {
                continue;
            };
            if tail.trim_start().starts_with("if ") && path.starts_with("/auth/") {
                for m in methods(tail) {
                    out.insert((m, path.to_string()));
                }
            }
        } else if let Some(i) = line
            .find(".starts_with(\"/auth/")
            .filter(|_| line.contains("=>"))
        {
            let rest = &line[i + ".starts_with(\"".len()..];
            let prefix = rest.split('"').next().unwrap();
            for m in methods(rest) {
                out.insert((m, format!("{prefix}{{id}}")));
            }
        }
    }
    // The provider's arms (`oidc_provider/mod.rs`, which the
    // dispatcher hands its paths to): `"/path" if get || post =>`.
    assert!(body.contains("is_provider_path(path)"));
    let src = include_str!("../oidc_provider/mod.rs");
    let start = src
        .find("match req.path {")
        .expect("the provider's dispatch");
    let arms = &src[start..];
    let arms = &arms[..arms.find("\n        }\n").expect("end of the match")];
    for line in arms.lines().map(str::trim) {
        let Some((path, tail)) = line.strip_prefix('"').and_then(|r| r.split_once('"')) else {
            continue;
        };
        let Some(cond) = tail.trim_start().strip_prefix("if ") else {
            continue;
        };
        let cond = cond.split("=>").next().unwrap();
        for m in cond.split("||").map(str::trim) {
            match m {
                "get" => out.insert(("GET".into(), path.to_string())),
                "post" => out.insert(("POST".into(), path.to_string())),
                other => panic!("unrecognized provider arm condition {other:?}"),
            };
        }
    }
    out
}

#[test]
fn routes_and_spec_agree() {
    let routed = routed();
    let documented = documented();
    // The parser must have found the dispatcher's arms at all.
    assert!(
        routed.contains(&("POST".into(), "/auth/login".into()))
            && routed.contains(&("DELETE".into(), "/auth/sessions/{id}".into())),
        "the dispatcher's arms were not recognized: {routed:?}"
    );
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routed in http/routes.rs but missing from src/openapi.rs: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "in src/openapi.rs but not routed by http/routes.rs: {unrouted:?}"
    );
}

#[test]
fn document_is_openapi_3_1_and_every_ref_resolves() {
    let doc: serde_json::Value = serde_json::from_slice(&document()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
    let text = doc.to_string();
    let mut refs = 0;
    for piece in text.split("\"$ref\":\"#/").skip(1) {
        let pointer = piece.split('"').next().unwrap();
        assert!(
            doc.pointer(&format!("/{pointer}")).is_some(),
            "dangling $ref #/{pointer}"
        );
        refs += 1;
    }
    assert!(refs > 20, "only {refs} refs");
    // Every operation documents its success and the shared answers
    // (the sign-in round trip of CONTRACT 8.1 succeeds with a 302).
    let redirects = ["/auth/oidc/{id}/start", "/auth/oidc/{id}/callback"];
    for (method, path) in documented() {
        let op = &doc["paths"][&path][method.to_lowercase()];
        let statuses: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
        // The provider's browser endpoints may succeed with a redirect only.
        let redirect = |s: &&String| path.starts_with("/auth/oauth/") && s.starts_with('3');
        assert!(
            statuses.iter().any(|s| s.starts_with('2') || redirect(s))
                || (redirects.contains(&path.as_str()) && statuses.iter().any(|s| *s == "302")),
            "{method} {path}: no success response"
        );
        assert!(
            statuses.iter().any(|s| *s == "400"),
            "{method} {path}: no 400"
        );
    }
    // Logout's bearer is optional: it never answers 401.
    assert!(doc["paths"]["/auth/logout"]["post"]["responses"]
        .get("401")
        .is_none());
    assert!(doc["paths"]["/auth/me"]["get"]["responses"]
        .get("401")
        .is_some());
}
