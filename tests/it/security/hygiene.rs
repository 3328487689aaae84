//! Nothing in CI or the tests ends a process it did not start.

use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Killing processes by name (CWE-283 unverified ownership; ASVS 4.0.3
/// V14.1 build hygiene): killing `nginx` by name in CI ends whatever nginx
/// runs on the machine, another developer's or a production one. The CI scripts and
/// the test sources may stop only their own children, by handle; the
/// package install must not start system services at all (policy-rc.d).
#[test]
fn ci_and_tests_never_kill_by_name() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = vec![root.join(".ci/run"), root.join(".ci/deps")];
    files(&root.join("tests"), &mut checked);
    // Spelled in pieces so this file does not match itself.
    let banned = [
        ["pk", "ill"].concat(),
        ["kill", "all"].concat(),
        ["kill", " -9"].concat(),
    ];
    for path in &checked {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for word in &banned {
            assert!(
                !text.contains(word.as_str()),
                "{} contains `{word}`",
                path.display()
            );
        }
    }
    let deps = std::fs::read_to_string(root.join(".ci/deps")).unwrap();
    assert!(
        deps.contains("policy-rc.d") && deps.contains("exit 101"),
        ".ci/deps must keep apt from starting services"
    );
}
