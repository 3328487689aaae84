//! Forward-auth behind a real nginx (`auth_request`).

use super::*;

/// Kills the nginx child when the test ends, however it ends.
struct NginxGuard {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for NginxGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NginxGuard {
    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

fn start_nginx(gateway: SocketAddr, upstream: SocketAddr) -> (NginxGuard, SocketAddr) {
    // Debian installs nginx in /usr/sbin, which a non-login PATH may lack.
    let nginx = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx is not installed: the forward-auth test needs a real nginx \
                 (apt-get install -y nginx-light; .ci/run installs it)"
            )
        });
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let port = free_port();
    let conf = format!(
        r#"
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location = /_auth {{
            internal;
            proxy_pass http://{gateway}/auth/verify;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }}
        location / {{
            auth_request /_auth;
            auth_request_set $user $upstream_http_x_user_id;
            auth_request_set $email $upstream_http_x_user_email;
            proxy_set_header X-User-Id $user;
            proxy_set_header X-User-Email $email;
            proxy_pass http://{upstream};
        }}
    }}
}}
"#
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(&nginx)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let mut guard = NginxGuard { child, dir };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if std::net::TcpStream::connect(addr).is_ok() {
            break;
        }
        if let Ok(Some(status)) = guard.child.try_wait() {
            panic!("nginx exited ({status}): {}", guard.error_log());
        }
        assert!(
            Instant::now() < deadline,
            "nginx did not start listening: {}",
            guard.error_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (guard, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_uses_forward_auth() {
    let gw = gateway("").await;
    let s = gw.signup("nell@example.com").await;
    let uid = s.user["id"].as_str().unwrap().to_string();
    let (nginx, addr) = start_nginx(gw.addr, gw.upstream.addr);

    // No token: nginx answers 401 itself and the upstream sees nothing.
    gw.upstream.reset();
    let r = http::get(addr, "/app/page", None).await;
    assert_eq!(r.status, 401, "{r:?}\n{}", nginx.error_log());
    assert_eq!(gw.upstream.hits(), 0);
    // A bad token: 401.
    let r = http::get(addr, "/app/page", Some("garbage")).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(gw.upstream.hits(), 0);
    // A forged identity header does not help.
    let r = raw(addr, "GET", "/app/page", &[("x-user-id", &uid)], None).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(gw.upstream.hits(), 0);

    // A valid token: through, and the upstream learns the user.
    let r = http::get(addr, "/app/page?x=1", Some(&s.access)).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", nginx.error_log());
    assert_eq!(gw.upstream.hits(), 1);
    let seen = gw.upstream.last_request().unwrap();
    assert_eq!(seen["path"], "/app/page?x=1");
    assert_eq!(last_echoed(&gw, "x-user-id").as_deref(), Some(uid.as_str()));
    assert_eq!(
        last_echoed(&gw, "x-user-email").as_deref(),
        Some("nell@example.com")
    );

    // After logout the same token is refused by nginx as well.
    let r = gw
        .post(
            "/auth/logout",
            json!({ "refresh_token": s.refresh }),
            Some(&s.access),
        )
        .await;
    assert_eq!(r.status, 204);
    let r = http::get(addr, "/app/page", Some(&s.access)).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(gw.upstream.hits(), 1);
    drop(nginx);
}
