//! Email address normalization: trim, NFC, lowercase the domain. The local
//! part keeps its case (RFC 5321), but two spellings that differ only in the
//! domain's case or Unicode composition are one account.

use unicode_normalization::UnicodeNormalization;

/// Normalize and validate; `None` when the address is not acceptable.
pub fn normalize(raw: &str) -> Option<String> {
    let s: String = raw.trim().nfc().collect();
    if s.len() > 254 || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return None;
    }
    let (local, domain) = s.rsplit_once('@')?;
    if local.is_empty() || local.len() > 64 || domain.is_empty() || local.contains('@') {
        return None;
    }
    if local.contains(['<', '>', '"', ',', ';', '\\', '(', ')', '[', ']', ':'])
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
        || !domain.contains('.') && domain != "localhost"
        || domain
            .chars()
            .any(|c| !(c.is_alphanumeric() || c == '-' || c == '.'))
    {
        return None;
    }
    let out = format!("{local}@{}", domain.to_lowercase());
    // Whatever we accept must be a mailbox lettre can send to.
    out.parse::<lettre::Address>().ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn spellings_collapse() {
        assert_eq!(
            normalize("  Alice@Example.COM ").as_deref(),
            Some("Alice@example.com")
        );
        assert_eq!(normalize("e\u{301}@x.org"), normalize("\u{e9}@x.org"));
        for bad in [
            "",
            "a",
            "@x.org",
            "a@",
            "a@b",
            "a b@x.org",
            "a@x.org\r\nBcc: y@z.org",
            "a@@x.org",
            "<a>@x.org",
        ] {
            assert_eq!(normalize(bad), None, "{bad:?}");
        }
    }
}
