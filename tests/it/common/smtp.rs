//! A real SMTP receiver for integration tests.
//!
//! The gateway sends mail (verification, password reset, ...) with lettre's
//! async SMTP client. Rather than mocking the transport, tests point the
//! gateway at this server, which speaks enough ESMTP for lettre (EHLO, AUTH
//! PLAIN/LOGIN with any credentials, MAIL, RCPT, DATA, RSET, NOOP, QUIT and
//! optionally STARTTLS) and captures each message. [`Mail`] helpers decode
//! the message with `mail-parser` (quoted-printable/base64, multipart,
//! encoded-words) so tests can pull the link or token out of the e-mail
//! exactly as a user would.
//!
//! [`SmtpServer::set_down`] simulates an outage: new connections get
//! `421` and are closed, `MAIL FROM` on open connections gets `451`.
//! [`SmtpServer::set_hold`] makes it slow at the test's pace: each message
//! is captured at the end of its DATA, and its `250` waits until the test
//! [releases](SmtpServer::release) it. [`SmtpServer::reject_next_data`]
//! answers the next messages' DATA with `451` after reading them (they
//! are kept in [`SmtpServer::rejected`]): a retry sends them again.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use mail_parser::{MimeHeaders as _, PartType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// One captured message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// Envelope sender (`MAIL FROM`), without angle brackets.
    pub from: String,
    /// Envelope recipients (`RCPT TO`), without angle brackets.
    pub to: Vec<String>,
    /// Raw message (headers + body) after dot-unstuffing, CRLF line endings.
    pub data: String,
    /// Whether the message arrived over TLS (STARTTLS or implicit TLS).
    pub tls: bool,
    /// `(username, password)` if the session authenticated.
    pub auth: Option<(String, String)>,
}

impl Mail {
    /// All top-level headers, unfolded, in order (values not RFC 2047
    /// decoded).
    pub fn headers(&self) -> Vec<(String, String)> {
        raw_headers(&self.data)
    }

    /// First top-level header with this name (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers()
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Like [`Mail::header`] with RFC 2047 encoded-words (`=?utf-8?b?..?=`)
    /// decoded; use for a non-ASCII `Subject`.
    pub fn header_decoded(&self, name: &str) -> Option<String> {
        let message = parse(&self.data);
        let values = message.header_as(name, mail_parser::HeaderForm::Text);
        values.into_iter().next().map(|v| match v {
            mail_parser::HeaderValue::Text(t) => t.into_owned(),
            mail_parser::HeaderValue::TextList(l) => l.join(", "),
            _ => String::new(),
        })
    }

    /// `Subject`, decoded.
    pub fn subject(&self) -> Option<String> {
        self.header_decoded("subject")
    }

    /// Decoded text body: the message itself if single-part, otherwise the
    /// first `text/plain` part (falling back to the first `text/*` part).
    /// Quoted-printable and base64 are decoded, and the charset.
    pub fn body_text(&self) -> String {
        find_part(&self.data, false, true).unwrap_or_default()
    }

    /// Decoded first `text/html` part, if any.
    pub fn body_html(&self) -> Option<String> {
        find_part(&self.data, true, false)
    }

    /// Every http(s) URL in the text body, then in the HTML body.
    pub fn links(&self) -> Vec<String> {
        let mut links = extract_links(&self.body_text());
        if let Some(html) = self.body_html() {
            links.extend(extract_links(&html.replace("&amp;", "&")));
        }
        links
    }

    /// First http(s) URL in the decoded body containing `path_contains`.
    pub fn find_link(&self, path_contains: &str) -> Option<String> {
        self.links().into_iter().find(|l| l.contains(path_contains))
    }

    /// The percent-decoded `token` query (or fragment) parameter of
    /// [`Mail::find_link`]'s result.
    pub fn token_from_link(&self, path_contains: &str) -> Option<String> {
        url_param(&self.find_link(path_contains)?, "token")
    }
}

/// A running SMTP server; the server task stops when this is dropped.
pub struct SmtpServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    messages: Mutex<Vec<Mail>>,
    auths: Mutex<Vec<(String, String)>>,
    down: AtomicBool,
    reject_auth: AtomicBool,
    connections: AtomicUsize,
    open_conns: AtomicUsize,
    /// Hold each message's `250` until released (see `set_hold`).
    hold: AtomicBool,
    gate: tokio::sync::Semaphore,
    /// Messages captured and waiting for their `250`.
    held: AtomicUsize,
    /// Messages whose DATA still gets `451` (see `reject_next_data`).
    reject_data: AtomicUsize,
    rejected: Mutex<Vec<Mail>>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            messages: Mutex::default(),
            auths: Mutex::default(),
            down: AtomicBool::default(),
            reject_auth: AtomicBool::default(),
            connections: AtomicUsize::default(),
            open_conns: AtomicUsize::default(),
            hold: AtomicBool::default(),
            gate: tokio::sync::Semaphore::new(0),
            held: AtomicUsize::default(),
            reject_data: AtomicUsize::default(),
            rejected: Mutex::default(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TlsMode {
    None,
    StartTls,
    Implicit,
}

/// Plain SMTP server on `127.0.0.1:<ephemeral>`.
pub async fn start() -> SmtpServer {
    SmtpServer::start().await
}

/// Plain SMTP server on a specific address (e.g. the port of a stopped one).
pub async fn start_on(addr: SocketAddr) -> SmtpServer {
    SmtpServer::start_on(addr).await
}

/// SMTP server offering STARTTLS with the given PEM cert chain and key.
pub async fn start_starttls(cert_pem_path: &Path, key_pem_path: &Path) -> SmtpServer {
    SmtpServer::start_starttls(cert_pem_path, key_pem_path).await
}

impl SmtpServer {
    /// Plain SMTP server on `127.0.0.1:<ephemeral>`.
    pub async fn start() -> SmtpServer {
        Self::start_on(fresh_local_addr()).await
    }

    /// Plain SMTP server on `addr`, retrying briefly while the port is still
    /// held by a just-stopped server.
    pub async fn start_on(addr: SocketAddr) -> SmtpServer {
        Self::spawn(addr, TlsMode::None, None).await
    }

    /// Advertises and supports STARTTLS (rustls, ring provider).
    pub async fn start_starttls(cert_pem_path: &Path, key_pem_path: &Path) -> SmtpServer {
        Self::start_starttls_on(fresh_local_addr(), cert_pem_path, key_pem_path).await
    }

    /// [`SmtpServer::start_starttls`] on a specific address.
    pub async fn start_starttls_on(
        addr: SocketAddr,
        cert_pem_path: &Path,
        key_pem_path: &Path,
    ) -> SmtpServer {
        let acceptor = tls_acceptor(cert_pem_path, key_pem_path);
        Self::spawn(addr, TlsMode::StartTls, Some(acceptor)).await
    }

    /// Implicit TLS ("SMTPS", port-465 style): TLS handshake first, then SMTP.
    pub async fn start_implicit_tls(cert_pem_path: &Path, key_pem_path: &Path) -> SmtpServer {
        let acceptor = tls_acceptor(cert_pem_path, key_pem_path);
        Self::spawn(fresh_local_addr(), TlsMode::Implicit, Some(acceptor)).await
    }

    async fn spawn(addr: SocketAddr, mode: TlsMode, acceptor: Option<TlsAcceptor>) -> SmtpServer {
        let listener = bind_with_retry(addr).await;
        let addr = listener.local_addr().expect("smtp local_addr");
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(accept_loop(listener, shared.clone(), mode, acceptor));
        SmtpServer { addr, shared, task }
    }

    /// Messages captured so far, oldest first.
    pub fn messages(&self) -> Vec<Mail> {
        lock(&self.shared.messages).clone()
    }

    /// Polls until at least `n` messages have arrived and returns them all;
    /// panics with what did arrive on timeout.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Mail> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            if tokio::time::Instant::now() >= deadline {
                let got: Vec<_> = messages
                    .iter()
                    .map(|m| format!("to={:?} subject={:?}", m.to, m.subject()))
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for {n} mail(s) at SMTP {}; got {}: {got:?}",
                    self.addr,
                    messages.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until a message matching `pred` has arrived and returns it;
    /// panics with what did arrive on timeout. (Waiting for a count breaks
    /// whenever a change adds a mail, such as a security notice.)
    pub async fn wait_for_match(&self, timeout: Duration, pred: impl Fn(&Mail) -> bool) -> Mail {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(m) = self.messages().into_iter().find(|m| pred(m)) {
                return m;
            }
            if tokio::time::Instant::now() >= deadline {
                let got: Vec<_> = self
                    .messages()
                    .iter()
                    .map(|m| format!("to={:?} subject={:?}", m.to, m.subject()))
                    .collect();
                panic!("timed out after {timeout:?} waiting for a matching mail; got {got:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits `d` and panics if any message arrived (e.g. no mail must be
    /// sent for an unknown account).
    pub async fn assert_no_mail_for(&self, d: Duration) {
        tokio::time::sleep(d).await;
        let messages = self.messages();
        assert!(
            messages.is_empty(),
            "expected no mail at SMTP {}, got {}: {messages:?}",
            self.addr,
            messages.len()
        );
    }

    /// Forgets captured messages and credentials.
    pub fn clear(&self) {
        lock(&self.shared.messages).clear();
        lock(&self.shared.auths).clear();
    }

    /// `true`: new connections get `421` and are closed; `MAIL FROM` on
    /// existing connections gets `451`. `false`: normal service.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// `true`: every AUTH attempt fails with `535`.
    pub fn set_reject_auth(&self, reject: bool) {
        self.shared.reject_auth.store(reject, Ordering::SeqCst);
    }

    /// Every `(username, password)` seen in AUTH, oldest first.
    pub fn auths(&self) -> Vec<(String, String)> {
        lock(&self.shared.auths).clone()
    }

    /// `true`: every message is captured at the end of its DATA (it shows
    /// in [`SmtpServer::messages`] at once), and its `250` waits until
    /// [`SmtpServer::release`] lets it go: a server as slow as the test
    /// wants. `false`: everything held goes, and no more is held.
    pub fn set_hold(&self, hold: bool) {
        self.shared.hold.store(hold, Ordering::SeqCst);
        if !hold {
            self.shared.gate.add_permits(1 << 20);
        }
    }

    /// Let `n` held messages (or the next ones) have their `250`.
    pub fn release(&self, n: usize) {
        self.shared.gate.add_permits(n);
    }

    /// How many captured messages wait for their `250` now.
    pub fn held(&self) -> usize {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// Answer the next `n` messages' DATA with `451` once they are read
    /// (a temporary failure after the whole message went over the wire).
    pub fn reject_next_data(&self, n: usize) {
        self.shared.reject_data.store(n, Ordering::SeqCst);
    }

    /// The messages answered `451` by [`SmtpServer::reject_next_data`].
    pub fn rejected(&self) -> Vec<Mail> {
        lock(&self.shared.rejected).clone()
    }

    /// Number of TCP connections accepted so far (including refused ones
    /// while down).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Aborts the server task (listener and connections close shortly after).
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Like [`SmtpServer::stop`] but returns only once the listener and all
    /// connections are really closed (bounded to 5 s).
    pub async fn stop_and_wait(&self) {
        self.task.abort();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !(self.task.is_finished() && self.shared.open_conns.load(Ordering::SeqCst) == 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

fn fresh_local_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], super::free_port()))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn bind_with_retry(addr: SocketAddr) -> TcpListener {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("smtp: cannot bind {addr}: {e}"),
        }
    }
}

fn tls_acceptor(cert_pem_path: &Path, key_pem_path: &Path) -> TlsAcceptor {
    let read =
        |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("smtp: read {}: {e}", p.display()));
    let cert_pem = read(cert_pem_path);
    let key_pem = read(key_pem_path);
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .expect("smtp: parse certificate PEM");
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .expect("smtp: parse key PEM")
        .expect("smtp: no private key in key PEM");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("smtp: TLS protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("smtp: TLS certificate/key");
    TlsAcceptor::from(Arc::new(config))
}

/// Decrements the open-connection count when a connection task ends or is
/// aborted.
struct ConnGuard(Arc<Shared>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.open_conns.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mode: TlsMode,
    acceptor: Option<TlsAcceptor>,
) {
    // Dropping the JoinSet (when this task is aborted) aborts all sessions.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        shared.open_conns.fetch_add(1, Ordering::SeqCst);
        let guard = ConnGuard(shared.clone());
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        conns.spawn(async move {
            let _guard = guard;
            // I/O errors just end the session.
            let _ = handle_conn(stream, &shared, mode, acceptor).await;
        });
    }
}

const GREETING: &[u8] = b"220 localhost ESMTP portcullis-test-smtp\r\n";

async fn handle_conn(
    mut tcp: TcpStream,
    shared: &Shared,
    mode: TlsMode,
    acceptor: Option<TlsAcceptor>,
) -> io::Result<()> {
    if mode == TlsMode::Implicit {
        let acceptor = acceptor.expect("implicit TLS needs an acceptor");
        let mut tls = acceptor.accept(tcp).await?;
        if refuse_if_down(&mut tls, shared).await? {
            return Ok(());
        }
        tls.write_all(GREETING).await?;
        session(tls, shared, false, true).await?;
        return Ok(());
    }
    if refuse_if_down(&mut tcp, shared).await? {
        return Ok(());
    }
    tcp.write_all(GREETING).await?;
    match session(tcp, shared, mode == TlsMode::StartTls, false).await? {
        SessionEnd::Closed => Ok(()),
        SessionEnd::StartTls(tcp) => {
            let acceptor = acceptor.expect("STARTTLS needs an acceptor");
            let tls = acceptor.accept(tcp).await?;
            // The client must EHLO again; no new greeting after STARTTLS.
            session(tls, shared, false, true).await?;
            Ok(())
        }
    }
}

/// While down, answers `421` and closes; returns whether it did.
async fn refuse_if_down<S: AsyncWrite + Unpin>(
    stream: &mut S,
    shared: &Shared,
) -> io::Result<bool> {
    if !shared.down.load(Ordering::SeqCst) {
        return Ok(false);
    }
    stream
        .write_all(b"421 4.3.2 localhost Service not available, closing transmission channel\r\n")
        .await?;
    stream.shutdown().await?;
    Ok(true)
}

enum SessionEnd<S> {
    Closed,
    /// Client issued STARTTLS and got `220`; upgrade this stream.
    StartTls(S),
}

#[derive(Default)]
struct Envelope {
    from: Option<String>,
    to: Vec<String>,
}

async fn reply<S: AsyncWrite + Unpin>(stream: &mut S, text: &str) -> io::Result<()> {
    stream.write_all(text.as_bytes()).await?;
    stream.write_all(b"\r\n").await?;
    stream.flush().await
}

/// Runs SMTP commands until QUIT/EOF or STARTTLS.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    shared: &Shared,
    offer_starttls: bool,
    tls: bool,
) -> io::Result<SessionEnd<S>> {
    let mut buf = Vec::new();
    let mut envelope = Envelope::default();
    let mut auth: Option<(String, String)> = None;
    loop {
        let Some(line) = read_line(&mut s, &mut buf).await? else {
            return Ok(SessionEnd::Closed);
        };
        let line = String::from_utf8_lossy(&line).into_owned();
        let (verb, arg) = match line.split_once(' ') {
            Some((verb, arg)) => (verb.to_ascii_uppercase(), arg.trim().to_string()),
            None => (line.trim().to_ascii_uppercase(), String::new()),
        };
        match verb.as_str() {
            "EHLO" => {
                envelope = Envelope::default();
                let mut text =
                    String::from("250-localhost greets you\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n");
                if offer_starttls {
                    text.push_str("250-STARTTLS\r\n");
                }
                text.push_str("250 AUTH PLAIN LOGIN");
                reply(&mut s, &text).await?;
            }
            "HELO" => {
                envelope = Envelope::default();
                reply(&mut s, "250 localhost").await?;
            }
            "STARTTLS" if offer_starttls => {
                reply(&mut s, "220 2.0.0 Ready to start TLS").await?;
                // Anything the client pipelined before the handshake is
                // discarded, as RFC 3207 requires.
                return Ok(SessionEnd::StartTls(s));
            }
            "STARTTLS" => reply(&mut s, "454 4.7.0 TLS not available").await?,
            "AUTH" => {
                let Some(creds) = read_auth(&mut s, &mut buf, &arg).await? else {
                    continue;
                };
                lock(&shared.auths).push(creds.clone());
                if shared.reject_auth.load(Ordering::SeqCst) {
                    reply(&mut s, "535 5.7.8 Authentication credentials invalid").await?;
                } else {
                    auth = Some(creds);
                    reply(&mut s, "235 2.7.0 Authentication successful").await?;
                }
            }
            "MAIL" => {
                if shared.down.load(Ordering::SeqCst) {
                    reply(&mut s, "451 4.3.0 Service temporarily unavailable").await?;
                } else if let Some(addr) = path_arg(&arg, "FROM:") {
                    envelope = Envelope {
                        from: Some(addr),
                        to: Vec::new(),
                    };
                    reply(&mut s, "250 2.1.0 OK").await?;
                } else {
                    reply(&mut s, "501 5.5.4 Syntax: MAIL FROM:<address>").await?;
                }
            }
            "RCPT" => {
                if envelope.from.is_none() {
                    reply(&mut s, "503 5.5.1 Need MAIL first").await?;
                } else if let Some(addr) = path_arg(&arg, "TO:") {
                    envelope.to.push(addr);
                    reply(&mut s, "250 2.1.5 OK").await?;
                } else {
                    reply(&mut s, "501 5.5.4 Syntax: RCPT TO:<address>").await?;
                }
            }
            "DATA" => {
                if envelope.to.is_empty() {
                    reply(&mut s, "503 5.5.1 Need RCPT first").await?;
                    continue;
                }
                reply(&mut s, "354 End data with <CR><LF>.<CR><LF>").await?;
                let mut data = Vec::new();
                loop {
                    let Some(line) = read_line(&mut s, &mut buf).await? else {
                        return Ok(SessionEnd::Closed);
                    };
                    if line == b"." {
                        break;
                    }
                    // Dot-unstuffing.
                    data.extend_from_slice(line.strip_prefix(b".").unwrap_or(&line));
                    data.extend_from_slice(b"\r\n");
                }
                let envelope = std::mem::take(&mut envelope);
                let reject = shared
                    .reject_data
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if reject {
                    lock(&shared.rejected).push(Mail {
                        from: envelope.from.unwrap_or_default(),
                        to: envelope.to,
                        data: String::from_utf8_lossy(&data).into_owned(),
                        tls,
                        auth: auth.clone(),
                    });
                    reply(&mut s, "451 4.3.0 Try again later").await?;
                    continue;
                }
                let id = {
                    let mut messages = lock(&shared.messages);
                    messages.push(Mail {
                        from: envelope.from.unwrap_or_default(),
                        to: envelope.to,
                        data: String::from_utf8_lossy(&data).into_owned(),
                        tls,
                        auth: auth.clone(),
                    });
                    messages.len()
                };
                if shared.hold.load(Ordering::SeqCst) {
                    shared.held.fetch_add(1, Ordering::SeqCst);
                    let permit = shared.gate.acquire().await;
                    shared.held.fetch_sub(1, Ordering::SeqCst);
                    if let Ok(p) = permit {
                        p.forget();
                    }
                }
                reply(&mut s, &format!("250 2.0.0 OK queued as {id}")).await?;
            }
            "RSET" => {
                envelope = Envelope::default();
                reply(&mut s, "250 2.0.0 OK").await?;
            }
            "NOOP" => reply(&mut s, "250 2.0.0 OK").await?,
            "VRFY" => reply(&mut s, "252 2.0.0 Cannot VRFY user").await?,
            "QUIT" => {
                reply(&mut s, "221 2.0.0 Bye").await?;
                // Best effort: the client may already be gone.
                let _ = s.shutdown().await;
                return Ok(SessionEnd::Closed);
            }
            _ => reply(&mut s, "500 5.5.2 Command not recognized").await?,
        }
    }
}

/// Handles `AUTH PLAIN [ir]` / `AUTH LOGIN [ir]`; replies with an error and
/// returns `None` if the exchange is malformed or cancelled.
async fn read_auth<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    arg: &str,
) -> io::Result<Option<(String, String)>> {
    let mut words = arg.split_whitespace();
    let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
    let initial = words.next().map(str::to_string);

    // Reads one base64 continuation line; `None` = cancelled or EOF.
    async fn next<S: AsyncRead + AsyncWrite + Unpin>(
        s: &mut S,
        buf: &mut Vec<u8>,
        prompt: &str,
    ) -> io::Result<Option<String>> {
        reply(s, prompt).await?;
        Ok(read_line(s, buf)
            .await?
            .map(|l| String::from_utf8_lossy(&l).trim().to_string())
            .filter(|l| l != "*"))
    }

    let decode = |b64: &str| {
        STANDARD
            .decode(b64)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let creds = match mechanism.as_str() {
        "PLAIN" => {
            let response = match initial {
                Some(ir) => Some(ir),
                None => next(s, buf, "334 ").await?,
            };
            // authzid NUL authcid NUL passwd
            response.as_deref().and_then(decode).and_then(|plain| {
                let mut fields = plain.split('\0');
                let (_authzid, user, pass) = (fields.next()?, fields.next()?, fields.next()?);
                Some((user.to_string(), pass.to_string()))
            })
        }
        "LOGIN" => {
            let user = match initial {
                Some(ir) => Some(ir),
                None => next(s, buf, "334 VXNlcm5hbWU6").await?,
            };
            match user.as_deref().and_then(decode) {
                Some(user) => next(s, buf, "334 UGFzc3dvcmQ6")
                    .await?
                    .as_deref()
                    .and_then(decode)
                    .map(|pass| (user, pass)),
                None => None,
            }
        }
        _ => {
            reply(s, "504 5.5.4 Unrecognized authentication type").await?;
            return Ok(None);
        }
    };
    if creds.is_none() {
        reply(s, "501 5.5.2 Malformed or cancelled authentication").await?;
    }
    Ok(creds)
}

/// `FROM:<a@b> BODY=8BITMIME` -> `a@b` (prefix matched case-insensitively).
fn path_arg(arg: &str, prefix: &str) -> Option<String> {
    let head = arg.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = arg[prefix.len()..].trim_start();
    match rest.strip_prefix('<') {
        Some(inner) => Some(inner.split('>').next()?.to_string()),
        None => Some(
            rest.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string(),
        ),
    }
}

/// Takes one line (without CRLF/LF) off `buf`, reading as needed; `None` on
/// EOF.
async fn read_line<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> io::Result<Option<Vec<u8>>> {
    loop {
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Some(line));
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = match s.read(&mut chunk).await {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

// ---------------------------------------------------------------------------
// MIME decoding (mail-parser)
// ---------------------------------------------------------------------------

fn parse(data: &str) -> mail_parser::Message<'_> {
    mail_parser::MessageParser::default()
        .parse(data.as_bytes())
        .unwrap_or_else(|| panic!("not a mail message: {data:?}"))
}

/// The top-level headers, raw values unfolded (the line breaks removed,
/// their white space kept) and trimmed.
fn raw_headers(data: &str) -> Vec<(String, String)> {
    parse(data)
        .headers_raw()
        .map(|(name, value)| {
            let unfolded = value.replace("\r\n", "").replace('\n', "");
            (name.to_string(), unfolded.trim().to_string())
        })
        .collect()
}

/// The decoded first part (depth-first) whose MIME type is `text/plain`
/// (or `text/html`); with `any_text`, failing that, the first `text/*`.
fn find_part(data: &str, html: bool, any_text: bool) -> Option<String> {
    let message = parse(data);
    let text = |part: &mail_parser::MessagePart<'_>, want_html: bool| match &part.body {
        PartType::Html(t) if want_html => Some(t.to_string()),
        PartType::Text(t) if !want_html => {
            let plain = part
                .content_type()
                .is_none_or(|ct| ct.subtype().is_none_or(|s| s.eq_ignore_ascii_case("plain")));
            plain.then(|| t.to_string())
        }
        _ => None,
    };
    let first = message.parts.iter().find_map(|p| text(p, html));
    first.or_else(|| {
        any_text
            .then(|| {
                message.parts.iter().find_map(|p| match &p.body {
                    PartType::Text(t) | PartType::Html(t) => Some(t.to_string()),
                    _ => None,
                })
            })
            .flatten()
    })
}

/// Every http(s) URL in `text`, trailing punctuation trimmed.
fn extract_links(text: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("http") {
        let candidate = &rest[start..];
        if !(candidate.starts_with("http://") || candidate.starts_with("https://")) {
            rest = &candidate[4..];
            continue;
        }
        let end = candidate
            .find(|c: char| c.is_whitespace() || "\"'<>`()[]{}".contains(c))
            .unwrap_or(candidate.len());
        let link = candidate[..end].trim_end_matches(['.', ',', ';', ':', '!', '?']);
        links.push(link.to_string());
        rest = &candidate[end..];
    }
    links
}

/// Percent-decoded value of `key` in the URL's query string or fragment.
/// `+` is kept literally (tokens may contain it).
fn url_param(url: &str, key: &str) -> Option<String> {
    let (before_fragment, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let query = before_fragment.split_once('?').map(|(_, q)| q);
    [query, fragment]
        .into_iter()
        .flatten()
        .flat_map(|s| s.split('&'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == key).then(|| percent_decode(v))
        })
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}
