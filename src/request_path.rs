//! Path normalization. Routes are matched on the normalized path and the
//! upstream receives exactly that path, so what was checked is what is served.
//!
//! Only percent-encoded *unreserved* characters are decoded; every other
//! escape is kept (upper-cased). Anything that different backends could read
//! in different ways is refused instead of guessed at.
//!
//! Path parameters (`/admin;x/users`) are such a thing: servlet containers
//! drop `;…` from each segment before routing, so a prefix check on the raw
//! path is fooled. [`normalize_request`] therefore strips them *before*
//! matching and reports that it did; the proxy refuses the request (400)
//! unless the matched route opts in with `strip_path_params`, and then
//! forwards the stripped path. An encoded `;` (`%3B`) is never a parameter
//! delimiter in RFC 3986, yet some backends decode before they split, so it
//! is refused everywhere.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    BadPercentEncoding,
    EncodedSeparator,
    ControlCharacter,
    Backslash,
    AboveRoot,
    DotSegmentParameter,
    /// A raw `;` where path parameters are not accepted (route prefixes).
    PathParameter,
    /// `%3B`: an encoded `;`.
    EncodedSemicolon,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the path must start with '/'",
            PathError::BadPercentEncoding => "the path has an invalid percent-encoding",
            PathError::EncodedSeparator => "the path has an encoded '/' or '\\'",
            PathError::ControlCharacter => "the path has a NUL or control character",
            PathError::Backslash => "the path has a '\\'",
            PathError::AboveRoot => "the path climbs above the root",
            PathError::DotSegmentParameter => "the path has a dot segment with parameters",
            PathError::PathParameter => "the path has a ';' path parameter",
            PathError::EncodedSemicolon => "the path has an encoded ';'",
        })
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// A request path after [`normalize_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// Normalized, with every `;…` path parameter removed.
    pub path: String,
    /// Whether the raw path had path parameters (that were removed).
    pub had_params: bool,
}

/// Normalize a path that must not carry path parameters (e.g. a route
/// prefix): a `;` is an error.
pub fn normalize(raw: &str) -> Result<String, PathError> {
    match normalize_request(raw)? {
        Normalized {
            had_params: true, ..
        } => Err(PathError::PathParameter),
        n => Ok(n.path),
    }
}

/// Normalize a request path (without its query string), stripping path
/// parameters from every segment before dot segments are resolved. The
/// caller decides whether stripped parameters were acceptable.
pub fn normalize_request(raw: &str) -> Result<Normalized, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_plain(bytes) {
        return Ok(Normalized {
            path: raw.to_string(),
            had_params: false,
        });
    }
    // 1. Decode unreserved escapes, validate the rest.
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (h, l) = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&h), Some(&l)) => (h, l),
                    _ => return Err(PathError::BadPercentEncoding),
                };
                let v = match (hex(h), hex(l)) {
                    (Some(h), Some(l)) => h << 4 | l,
                    _ => return Err(PathError::BadPercentEncoding),
                };
                match v {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    b';' => return Err(PathError::EncodedSemicolon),
                    0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
                    v if is_unreserved(v) => decoded.push(v as char),
                    v => {
                        decoded.push('%');
                        decoded.push(char::from(b"0123456789ABCDEF"[(v >> 4) as usize]));
                        decoded.push(char::from(b"0123456789ABCDEF"[(v & 15) as usize]));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            _ => {
                // Multi-byte UTF-8 sequences pass through byte by byte; the
                // input is a &str, so the output stays valid UTF-8.
                let ch_len = utf8_len(b);
                decoded.push_str(&raw[i..i + ch_len]);
                i += ch_len;
            }
        }
    }
    // 2. Resolve dot segments and merge empty ones.
    let mut out: Vec<&str> = Vec::new();
    let trailing = decoded.ends_with('/');
    let segments: Vec<&str> = decoded.split('/').collect();
    let last = segments.len() - 1;
    let mut ends_in_dir = trailing;
    let mut had_params = false;
    for (idx, seg) in segments.iter().enumerate() {
        let bare = seg.split(';').next().unwrap_or("");
        if bare != *seg {
            // `..;x` would climb only after stripping: never guess.
            if bare == "." || bare == ".." {
                return Err(PathError::DotSegmentParameter);
            }
            had_params = true;
        }
        match bare {
            "" => {}
            "." => {
                if idx == last {
                    ends_in_dir = true;
                }
            }
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                if idx == last {
                    ends_in_dir = true;
                }
            }
            s => out.push(s),
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for s in &out {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() || ends_in_dir {
        path.push('/');
    }
    Ok(Normalized { path, had_params })
}

/// A path that normalizing leaves as it is (most of them): unreserved
/// characters and `/` only, no empty segment but a trailing one, no `.` or
/// `..` segment. `bytes` starts with `/`.
fn is_plain(bytes: &[u8]) -> bool {
    let mut start = 1;
    for i in 1..=bytes.len() {
        if i < bytes.len() && bytes[i] != b'/' {
            if !is_unreserved(bytes[i]) {
                return false;
            }
            continue;
        }
        let seg = &bytes[start..i];
        if (seg.is_empty() && i < bytes.len()) || seg == b"." || seg == b".." {
            return false;
        }
        start = i + 1;
    }
    true
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// Whether `path` falls under `prefix`. A prefix that does not end in '/'
/// matches whole segments only: `/api` matches `/api` and `/api/x`, not `/apix`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix.ends_with('/') {
        path.starts_with(prefix)
    } else {
        path == prefix
            || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_path_shortcut_agrees_with_full_normalization() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let parts = ["/", "a", ".", "..", "-", "~", "_", "%41", ";", "%2e", "B9"];
        for _ in 0..50_000 {
            let n = rng.gen_range(0..8);
            let mut p = String::from("/");
            for _ in 0..n {
                p.push_str(parts[rng.gen_range(0..parts.len())]);
            }
            let fast = is_plain(p.as_bytes());
            // With the shortcut off: what the full algorithm makes of it.
            let full = {
                let mut q = p.clone();
                q.push('%');
                q.push_str("41");
                normalize_request(&q).map(|n| n.path.strip_suffix('A').map(str::to_string))
            };
            if fast {
                assert_eq!(full, Ok(Some(p.clone())), "{p}");
            }
        }
    }

    #[test]
    fn resolves_dots_and_slashes() {
        let cases = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("//a///b", "/a/b"),
            ("/public/../admin", "/admin"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/%61dmin", "/admin"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E/admin", "/admin"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/caf\u{e9}", "/caf\u{e9}"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn rejects_what_cannot_be_normalized_safely() {
        let cases = [
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%2Fb", PathError::EncodedSeparator),
            ("/a%5cb", PathError::EncodedSeparator),
            ("/a\\b", PathError::Backslash),
            ("/a%00b", PathError::ControlCharacter),
            ("/a%0ab", PathError::ControlCharacter),
            ("/..", PathError::AboveRoot),
            ("/a/../../b", PathError::AboveRoot),
            ("/%2e%2e/x", PathError::AboveRoot),
            ("/a%zz", PathError::BadPercentEncoding),
            ("/a%4", PathError::BadPercentEncoding),
            ("/a%", PathError::BadPercentEncoding),
            ("a/b", PathError::NotAbsolute),
            ("/public/..;/admin", PathError::DotSegmentParameter),
            ("/admin;x/users", PathError::PathParameter),
            ("/admin%3bx/users", PathError::EncodedSemicolon),
            ("/admin%3B/users", PathError::EncodedSemicolon),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn path_parameters_are_stripped_and_reported() {
        for (raw, want) in [
            ("/admin;x/users", "/admin/users"),
            ("/admin;/users", "/admin/users"),
            ("/admin;jsessionid=1/users", "/admin/users"),
            ("/a/b;v=1.2", "/a/b"),
            ("/;x/admin", "/admin"),
            ("/a;x/;y/b;z/", "/a/b/"),
        ] {
            assert_eq!(
                normalize_request(raw),
                Ok(Normalized {
                    path: want.into(),
                    had_params: true
                }),
                "{raw}"
            );
        }
        assert_eq!(
            normalize_request("/a/b"),
            Ok(Normalized {
                path: "/a/b".into(),
                had_params: false
            })
        );
        for raw in ["/a%3Bb", "/a%3bb/c", "/a;x%3Bb"] {
            assert_eq!(
                normalize_request(raw),
                Err(PathError::EncodedSemicolon),
                "{raw}"
            );
        }
        for raw in ["/a/..;x/b", "/a/.;/b"] {
            assert_eq!(
                normalize_request(raw),
                Err(PathError::DotSegmentParameter),
                "{raw}"
            );
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(!prefix_matches("/api/", "/api"));
    }
}
