//! User agents as a person reads them: "Firefox 133 on Linux" rather than
//! the raw `User-Agent` string, on the portal's sessions page and in the
//! admin console. The parsing is woothee's (a compiled-in dataset shared
//! by its implementations in several languages); this module only words
//! its result.

use std::sync::LazyLock;

/// The longest `User-Agent` looked at: the rest is never a browser's name.
const MAX_LEN: usize = 512;

static PARSER: LazyLock<woothee::parser::Parser> = LazyLock::new(woothee::parser::Parser::new);

/// `raw` as "Browser major-version on OS", "Browser major-version" or
/// "Unknown browser on OS"; a client woothee does not know (a script, a
/// library) is shown as it names itself ("curl/8.5.0", cut short);
/// "Unknown" when there is nothing at all. Render it escaped: it may be
/// anything the client sent.
pub fn describe(raw: &str) -> String {
    let raw = raw.trim();
    let cut = match raw.char_indices().nth(MAX_LEN) {
        Some((i, _)) => &raw[..i],
        None => raw,
    };
    if cut.is_empty() || cut == "-" {
        return "Unknown".into();
    }
    let known = |v: &str| !v.is_empty() && v != woothee::woothee::VALUE_UNKNOWN;
    let Some(r) = PARSER.parse(cut) else {
        return product(cut);
    };
    // A library (curl, wget, a language's HTTP client) names itself best.
    if r.name == "HTTP Library" {
        return product(cut);
    }
    let browser = known(r.name).then(|| {
        let major = r.version.split('.').next().unwrap_or("");
        if major.is_empty() || !known(r.version) {
            r.name.to_string()
        } else {
            format!("{} {major}", r.name)
        }
    });
    let os = known(r.os).then(|| os_name(r.os, &r.os_version));
    match (browser, os) {
        (Some(b), Some(o)) => format!("{b} on {o}"),
        (Some(b), None) => b,
        (None, Some(o)) => format!("Unknown browser on {o}"),
        (None, None) => product(cut),
    }
}

/// A client woothee does not know, as it named itself (cut short).
fn product(raw: &str) -> String {
    const SHOWN: usize = 120;
    if raw.chars().count() <= SHOWN {
        return raw.to_string();
    }
    let mut s: String = raw.chars().take(SHOWN).collect();
    s.push('…');
    s
}

/// woothee's OS names as their makers spell them now.
fn os_name(os: &str, version: &str) -> String {
    match os {
        "Mac OSX" => "macOS".into(),
        "iPhone" | "iPad" | "iPod" => "iOS".into(),
        "Android" if !version.is_empty() && version != woothee::woothee::VALUE_UNKNOWN => {
            format!("Android {}", version.split('.').next().unwrap_or(version))
        }
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn browsers_read_as_a_person_would() {
        let cases = [
            (
                "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
                "Firefox 133 on Linux",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
                "Chrome 131 on Windows 10",
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
                "Safari 18 on macOS",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
                "Safari 18 on iOS",
            ),
            ("curl/8.5.0", "curl/8.5.0"),
            ("", "Unknown"),
        ];
        for (raw, want) in cases {
            assert_eq!(describe(raw), want, "{raw}");
        }
    }

    #[test]
    fn a_huge_or_odd_string_is_cut_not_trusted() {
        let huge = "A".repeat(100_000);
        assert_eq!(describe(&huge).chars().count(), 121);
        assert_eq!(describe("<script>x</script> y"), "<script>x</script> y");
    }
}
