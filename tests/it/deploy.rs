//! The deployment files under `deploy/` and the `Dockerfile`, checked with
//! the tools that read them: `portcullis check-config` for the gateway
//! samples, `nginx -t` for the nginx sample, `promtool check rules` for the
//! alert rules and `systemd-analyze verify` for the unit. The tools come
//! from `.ci/deps --test`; a missing tool fails the test. Traefik's sample
//! and the Dockerfile cannot be run here (no traefik binary, no Docker
//! daemon): the Dockerfile gets a structural check only.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::bin::{self, CLI_LIMIT};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// An executable by name on PATH or in the sbin directories.
fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not installed: run `bash .ci/deps --test` (Debian package {package})")
        });
    found
}

#[test]
fn sample_gateway_configs_pass_check_config() {
    let mut samples: Vec<PathBuf> = std::fs::read_dir(repo("deploy/gateway"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    samples.push(repo("gateway.toml"));
    assert!(samples.len() >= 3, "{samples:?}");
    for sample in &samples {
        let out = bin::run(
            bin::command(&["check-config", "--config", sample.to_str().unwrap()]),
            None,
            CLI_LIMIT,
        );
        assert!(out.ok(), "{}: {out:?}", sample.display());
        // The same file with one unknown key is refused: the check is real.
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.toml");
        let text = std::fs::read_to_string(sample).unwrap();
        std::fs::write(
            &bad,
            text.replacen("[server]", "[server]\nlisten_typo = 1", 1),
        )
        .unwrap();
        let out = bin::run(
            bin::command(&["check-config", "--config", bad.to_str().unwrap()]),
            None,
            CLI_LIMIT,
        );
        assert_eq!(out.status.code(), Some(2), "{}: {out:?}", sample.display());
        assert!(out.stderr.contains("listen_typo") || out.stdout.contains("listen_typo"));
    }
}

#[test]
fn nginx_sample_passes_nginx_t() {
    let nginx = tool("nginx", "nginx-light");
    let prefix = tempfile::tempdir().unwrap();
    std::fs::create_dir(prefix.path().join("logs")).unwrap();
    let check = |conf: &Path| {
        let mut cmd = Command::new(&nginx);
        cmd.arg("-t")
            .arg("-c")
            .arg(conf)
            .arg("-p")
            .arg(prefix.path())
            .arg("-g")
            .arg(format!(
                "pid {}/nginx.pid; error_log stderr;",
                prefix.path().display()
            ));
        bin::run(cmd, None, CLI_LIMIT)
    };
    let conf = repo("deploy/nginx/nginx.conf");
    let out = check(&conf);
    assert!(out.ok(), "nginx -t: {out:?}");
    assert!(out.stderr.contains("test is successful"), "{out:?}");
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains("auth_request /_portcullis_verify;"));
    assert!(text.contains("/auth/verify"));
    // A broken copy is refused: the check is real.
    let bad = prefix.path().join("bad.conf");
    std::fs::write(
        &bad,
        text.replace(
            "auth_request /_portcullis_verify;",
            "auth_requestt /_portcullis_verify;",
        ),
    )
    .unwrap();
    assert!(!check(&bad).ok());
}

#[test]
fn alert_rules_pass_promtool() {
    let promtool = tool("promtool", "prometheus");
    let rules = repo("deploy/prometheus/alerts.yml");
    let mut cmd = Command::new(&promtool);
    cmd.args(["check", "rules"]).arg(&rules);
    let out = bin::run(cmd, None, CLI_LIMIT);
    assert!(out.ok(), "promtool check rules: {out:?}");
    assert!(out.stdout.contains("SUCCESS"), "{out:?}");
    // Every metric the rules name is one the gateway exports.
    let text = std::fs::read_to_string(&rules).unwrap();
    let metrics_src = std::fs::read_to_string(repo("src/metrics.rs")).unwrap();
    let mut named = 0;
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(base) = word.strip_prefix("portcullis_") {
            let base = base.trim_end_matches("_bucket");
            assert!(
                metrics_src.contains(&format!("\"portcullis_{base}\"")),
                "alerts.yml names portcullis_{base}, which the gateway does not export"
            );
            named += 1;
        }
    }
    assert!(named >= 6, "{named}");
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let analyze = tool("systemd-analyze", "systemd");
    let unit = std::fs::read_to_string(repo("deploy/systemd/portcullis.service")).unwrap();
    for directive in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "StateDirectory=portcullis",
        "ReadWritePaths=/var/lib/portcullis",
        "NoNewPrivileges=yes",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Type=notify",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == directive),
            "missing {directive}"
        );
    }
    // verify needs the ExecStart binary to exist: point it at ours.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/portcullis", bin::BIN)).unwrap();
    let verify = |p: &Path| {
        let mut cmd = Command::new(&analyze);
        cmd.arg("verify").arg(p);
        bin::run(cmd, None, CLI_LIMIT)
    };
    let out = verify(&path);
    // Unknown keys are only warned about: any output is a failure.
    assert!(
        out.ok() && out.stderr.trim().is_empty(),
        "systemd-analyze verify: {out:?}"
    );
    let bad = dir.path().join("bad.service");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("NoNewPrivileges=", "NoNewPrivilege="),
    )
    .unwrap();
    let out = verify(&bad);
    assert!(!out.stderr.trim().is_empty(), "{out:?}");
}

#[test]
fn dockerfile_is_multi_stage_and_runs_as_non_root() {
    let text = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(froms[1].contains("distroless") || froms[1].contains("slim"));
    let user = text
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains("root") || user.contains("nonroot"));
    assert!(!user.trim_start_matches("USER ").starts_with('0'), "{user}");
    // Every COPY from the build context names something in the repository.
    for line in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(repo(src).exists(), "Dockerfile copies missing {src}");
        }
    }
}

/// The Kubernetes sample (issue 27): it parses; its embedded gateway.toml
/// passes `check-config`; the readiness probe asks `/readyz` and the
/// liveness probe `/healthz`, both on the admin listener's port; the
/// Service does not publish the admin port; the pod's termination grace
/// outlasts the gateway's drain.
#[test]
fn kubernetes_sample_probes_readyz_and_healthz_on_the_admin_listener() {
    let text = std::fs::read_to_string(repo("deploy/kubernetes/portcullis.yaml")).unwrap();
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
        .collect();
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(k))
            .unwrap_or_else(|| panic!("no {k}"))
            .clone()
    };
    let toml = kind("ConfigMap")["data"]["gateway.toml"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, &toml).unwrap();
    let out = bin::run(
        bin::command(&["check-config", "--config", path.to_str().unwrap()]),
        None,
        CLI_LIMIT,
    );
    assert!(out.ok(), "{out:?}");
    let cfg: toml::Value = toml::from_str(&toml).unwrap();
    let port_of = |key: &str| -> u64 {
        let a = cfg["server"][key].as_str().unwrap();
        a.rsplit(':').next().unwrap().parse().unwrap()
    };
    let admin_port = port_of("admin_listen");
    let grace = cfg["server"]["grace_period_secs"].as_integer().unwrap() as u64;

    let deployment = kind("Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    // A named port resolves through the container's ports.
    let resolve = |p: &serde_yaml::Value| -> u64 {
        match p.as_u64() {
            Some(n) => n,
            None => c["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|q| q["name"] == *p)
                .and_then(|q| q["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("no port {p:?}")),
        }
    };
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(resolve(&get["port"]), admin_port, "{probe} port");
    }
    assert!(
        pod["terminationGracePeriodSeconds"].as_u64().unwrap() > grace,
        "the pod is killed before the drain ends"
    );
    let public = port_of("listen");
    for p in kind("Service")["spec"]["ports"].as_sequence().unwrap() {
        let target = resolve(&p["targetPort"]);
        assert_ne!(target, admin_port, "the Service publishes the admin port");
        assert_eq!(target, public);
    }
}
