//! The access log (issue 24): one line per request the proxy served, in
//! Pingora's `logging` phase, through `tracing` with the target `access`
//! (`log.access_log` turns it off, `log.access_file` sends it to its own
//! file). A line names the method, the host (bounded: see [`HostLabels`]),
//! the path WITHOUT its query (a query can carry a reset or verification
//! token), the status, the route index, the rule of a refusal, the
//! duration, the request id and the client IP. Never a token or a cookie.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use crate::config::{Config, HostPattern};
use crate::logging::AccessFormat;

/// The `tracing` target of the access log.
pub const TARGET: &str = crate::logging::ACCESS;

/// The host label of a request, with bounded cardinality: a host some
/// route names exactly, or the portal's host (`mail.link_base_url`), as
/// itself; a host under a one-label wildcard route as that pattern
/// (`*.example.test`); anything else `other`. Built once per config, so a
/// request pays one hash lookup (two for a wildcard).
#[derive(Debug, Default)]
pub struct HostLabels {
    exact: HashSet<String>,
    /// Wildcard parent (`example.test`) → its label (`*.example.test`).
    wildcard: HashMap<String, String>,
}

/// The label of a host that no route (and not the portal) names.
pub const OTHER: &str = "other";

impl HostLabels {
    pub fn build(cfg: &Config) -> Self {
        let mut labels = HostLabels::default();
        for r in &cfg.routes {
            match &r.host {
                HostPattern::Any => {}
                HostPattern::Exact(h) => {
                    labels.exact.insert(h.clone());
                }
                HostPattern::Wildcard(p) => {
                    labels.wildcard.insert(p.clone(), format!("*.{p}"));
                }
            }
        }
        if let Some(h) = url::Url::parse(&cfg.mail.link_base_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .and_then(|h| crate::config::normalize_host(&h).map(|n| n.into_owned()))
        {
            labels.exact.insert(h);
        }
        labels
    }

    /// The label of the host a request names (as sent: normalized here).
    pub fn label(&self, raw: Option<&str>) -> &str {
        let Some(host) = raw.and_then(crate::config::normalize_host) else {
            return OTHER;
        };
        if let Some(h) = self.exact.get(&*host) {
            return h;
        }
        if !host.starts_with('[') {
            if let Some(l) = host
                .split_once('.')
                .and_then(|(_, parent)| self.wildcard.get(parent))
            {
                return l;
            }
        }
        OTHER
    }
}

/// The path of a request target, without its query (and without a
/// fragment, which clients should not send), bounded to 512 bytes.
pub fn path_only(raw: &[u8]) -> std::borrow::Cow<'_, str> {
    let end = raw
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(raw.len());
    let path = &raw[..end.min(512)];
    // Borrowed when it is UTF-8 already: no copy per request.
    String::from_utf8_lossy(path)
}

/// What one access line says.
pub struct Line<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub route: Option<usize>,
    pub rule: Option<&'static str>,
    pub duration_us: u64,
    pub request_id: &'a str,
    pub client_ip: Option<IpAddr>,
}

/// Whether access lines are written at all (the log filter lets
/// `access=info` through); `log.access_log` is the caller's check.
pub fn enabled() -> bool {
    crate::logging::access_sink().is_some()
}

/// Write one access line (target `access`, at info) in the log's format,
/// into the batched sink; nothing when [`enabled`] is false.
pub fn write(l: &Line<'_>) {
    let Some(sink) = crate::logging::access_sink() else {
        return;
    };
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    // A log line's timestamp is the wall clock, as the main log's
    // (`tracing`'s own timer); nothing is decided by it.
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now();
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        format_line(&mut b, sink.format, l, now);
        sink.write_line(&b);
    });
}

/// One line, with its newline, shaped like the `tracing` formatters'
/// (timestamp, level, target, message `access`, the fields).
fn format_line(out: &mut Vec<u8>, format: AccessFormat, l: &Line<'_>, now: std::time::SystemTime) {
    use std::io::Write;
    let json = format != AccessFormat::Human;
    if json {
        out.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(out, now);
        out.extend_from_slice(b"\",\"level\":\"INFO\",");
        if format == AccessFormat::Json {
            out.extend_from_slice(b"\"fields\":{");
        }
        out.extend_from_slice(b"\"message\":\"access\"");
    } else {
        timestamp(out, now);
        out.extend_from_slice(b"  INFO access: access");
    }
    let field = |out: &mut Vec<u8>, name: &str| {
        if json {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
        } else {
            out.push(b' ');
            out.extend_from_slice(name.as_bytes());
            out.push(b'=');
        }
    };
    for (name, v) in [("method", l.method), ("host", l.host), ("path", l.path)] {
        field(out, name);
        quoted(out, v);
    }
    field(out, "status");
    decimal(out, u64::from(l.status));
    if let Some(r) = l.route {
        field(out, "route");
        decimal(out, r as u64);
    }
    if let Some(r) = l.rule {
        field(out, "rule");
        quoted(out, r);
    }
    field(out, "duration_us");
    decimal(out, l.duration_us);
    field(out, "request_id");
    quoted(out, l.request_id);
    if let Some(ip) = l.client_ip {
        field(out, "client_ip");
        if json {
            let _ = write!(out, "\"{ip}\"");
        } else {
            let _ = write!(out, "{ip}");
        }
    }
    if format == AccessFormat::Json {
        out.push(b'}');
    }
    if json {
        out.extend_from_slice(b",\"target\":\"access\"}");
    }
    out.push(b'\n');
}

/// A JSON string (also the human format's quoting): quotes, backslashes
/// and control characters escaped, so a hostile path cannot end the line
/// or forge a field.
fn quoted(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let special = |b: &u8| matches!(b, b'"' | b'\\' | 0..=0x1f | 0x7f);
    out.push(b'"');
    let mut rest = s.as_bytes();
    while let Some(i) = rest.iter().position(special) {
        out.extend_from_slice(&rest[..i]);
        match rest[i] {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 15) as usize]);
            }
        }
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

/// RFC 3339 in UTC with microseconds (`2026-12-07T20:00:00.123456Z`), as
/// the main log writes it; the date and time of day are formatted once per
/// second per thread.
fn timestamp(out: &mut Vec<u8>, now: std::time::SystemTime) {
    use std::io::Write;
    thread_local! {
        static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    }
    let d = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (cached, mut text) = SECOND.get();
    if cached != secs {
        let (y, m, day) = civil_from_days((secs / 86_400) as i64);
        let t = secs % 86_400;
        let mut cur = std::io::Cursor::new(&mut text[..]);
        let _ = write!(
            cur,
            "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}",
            t / 3600,
            t / 60 % 60,
            t % 60
        );
        SECOND.set((secs, text));
    }
    out.extend_from_slice(&text);
    out.push(b'.');
    let micros = d.subsec_micros();
    for div in [100_000, 10_000, 1000, 100, 10, 1] {
        out.push(b'0' + (micros / div % 10) as u8);
    }
    out.push(b'Z');
}

/// An unsigned integer in decimal, without `fmt`'s machinery.
fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::{civil_from_days, format_line, path_only, AccessFormat, Line};

    fn line() -> Line<'static> {
        Line {
            method: "GET",
            host: "app.example.test",
            path: "/a\"b\\c\n",
            status: 403,
            route: Some(2),
            rule: Some("networks"),
            duration_us: 1234,
            request_id: "rid-1",
            client_ip: Some("::1".parse().unwrap()),
        }
    }

    #[test]
    fn json_lines_parse_and_carry_every_field() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_796_673_898_000_042);
        for (format, nested) in [(AccessFormat::Json, true), (AccessFormat::Flat, false)] {
            let mut out = Vec::new();
            format_line(&mut out, format, &line(), at);
            assert_eq!(out.last(), Some(&b'\n'));
            assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["target"], "access");
            assert_eq!(v["level"], "INFO");
            assert_eq!(v["timestamp"], "2026-12-07T20:04:58.000042Z");
            let f = if nested { &v["fields"] } else { &v };
            assert_eq!(f["message"], "access");
            assert_eq!(f["method"], "GET");
            assert_eq!(f["host"], "app.example.test");
            assert_eq!(f["path"], "/a\"b\\c\n");
            assert_eq!(f["status"], 403);
            assert_eq!(f["route"], 2);
            assert_eq!(f["rule"], "networks");
            assert_eq!(f["duration_us"], 1234);
            assert_eq!(f["request_id"], "rid-1");
            assert_eq!(f["client_ip"], "::1");
        }
    }

    #[test]
    fn human_lines_are_one_line_and_quote_the_path() {
        let mut out = Vec::new();
        let mut l = line();
        l.route = None;
        l.rule = None;
        l.client_ip = None;
        format_line(&mut out, AccessFormat::Human, &l, std::time::UNIX_EPOCH);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "1970-01-01T00:00:00.000000Z  INFO access: access method=\"GET\" host=\"app.example.test\" path=\"/a\\\"b\\\\c\\u000a\" status=403 duration_us=1234 request_id=\"rid-1\"\n"
        );
    }

    #[test]
    fn decimals() {
        for n in [0u64, 7, 10, 403, 1_234_567, u64::MAX] {
            let mut out = Vec::new();
            super::decimal(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    #[test]
    fn dates_match_the_calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_794), (2026, 12, 7));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn the_query_never_reaches_the_line() {
        assert_eq!(path_only(b"/a/b?token=s3cr3t"), "/a/b");
        assert_eq!(path_only(b"/a#frag?x"), "/a");
        assert_eq!(path_only(b"/plain"), "/plain");
        assert_eq!(path_only(&[b'/'; 2000]).len(), 512);
    }
}
