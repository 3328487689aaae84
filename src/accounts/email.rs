//! Email address normalization, so that one person cannot hold several
//! accounts under spellings of one mailbox:
//!
//! - the domain goes through IDNA (UTS #46, STD3 rules, DNS lengths) to its
//!   ASCII form: `bücher.example`, `BÜCHER.example`, `xn--bcher-kva.example`
//!   and full-width `ｂüｃｈｅｒ.example` are one domain;
//! - the local part is NFKC-normalized (compatibility forms such as
//!   full-width letters or ligatures fold to their plain letters) and keeps
//!   its case (RFC 5321); the store compares case-insensitively.
//!
//! The normalized form is what is stored, compared and mailed to: mail only
//! ever goes to the mailbox the account is keyed on. Everything is checked
//! *after* normalization, since NFKC can produce characters such as `<` or
//! `@` from look-alikes.

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
use unicode_normalization::UnicodeNormalization;

/// Normalize and validate; `None` when the address is not acceptable
/// (including a domain that is not valid IDNA).
pub fn normalize(raw: &str) -> Option<String> {
    let s = raw.trim();
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return None;
    }
    let (local, domain) = s.rsplit_once('@')?;
    let local: String = local.nfkc().collect();
    let domain = ascii_domain(domain)?;
    if local.is_empty()
        || local.len() > 64
        || local.contains(['@', '<', '>', '"', ',', ';', '\\', '(', ')', '[', ']', ':'])
        || local.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return None;
    }
    if !domain.contains('.') && domain != "localhost" {
        return None;
    }
    let out = format!("{local}@{domain}");
    if out.len() > 254 {
        return None;
    }
    // Whatever we accept must be a mailbox lettre can send to.
    out.parse::<lettre::Address>().ok()?;
    Some(out)
}

/// The domain in IDNA ASCII form (lowercase, Punycode where needed).
fn ascii_domain(domain: &str) -> Option<String> {
    if domain.is_empty() {
        return None;
    }
    let ascii = Uts46::new()
        .to_ascii(
            domain.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::CheckFirstLast,
            DnsLength::Verify,
        )
        .ok()?;
    // STD3 and the DNS length check leave only LDH labels and dots; say so
    // here too rather than trust every future version of the mapping.
    let ok = !ascii.is_empty()
        && ascii
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    ok.then(|| ascii.into_owned())
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

    #[test]
    fn idna_domains_are_one_domain() {
        let want = Some("alice@xn--bcher-kva.example".to_string());
        for spelling in [
            "alice@bücher.example",
            "alice@BÜCHER.example",
            "alice@xn--bcher-kva.example",
            "alice@XN--BCHER-KVA.EXAMPLE",
            "alice@bu\u{308}cher.example",
            "alice@\u{ff42}\u{fc}\u{ff43}\u{ff48}\u{ff45}\u{ff52}.example",
        ] {
            assert_eq!(normalize(spelling), want, "{spelling}");
        }
        assert_eq!(
            normalize("m@\u{ff45}\u{ff58}\u{ff41}\u{ff4d}\u{ff50}\u{ff4c}\u{ff45}.test").as_deref(),
            Some("m@example.test")
        );
        // Ideographic full stop is a dot in UTS #46.
        assert_eq!(
            normalize("m@example\u{3002}test").as_deref(),
            Some("m@example.test")
        );
    }

    #[test]
    fn local_parts_compare_under_nfkc() {
        // Full-width letters and ligatures fold to the plain letters.
        assert_eq!(
            normalize("\u{ff4d}@example.test").as_deref(),
            Some("m@example.test")
        );
        assert_eq!(
            normalize("\u{fb01}le@example.test").as_deref(),
            Some("file@example.test")
        );
        // Look-alikes that fold into syntax are refused, not smuggled.
        for bad in [
            "a\u{ff1c}b@example.test", // full-width '<'
            "a\u{fe6b}b@example.test", // small '@'
            "a\u{ff20}b@example.test", // full-width '@' in the local part
        ] {
            assert_eq!(normalize(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn invalid_idna_is_refused() {
        for bad in [
            "a@xn--a.example",   // invalid Punycode
            "a@-lead.example",   // hyphen first
            "a@trail-.example",  // hyphen last
            "a@exa_mple.test",   // not LDH
            "a@x..example",      // empty label
            "a@.example",        // empty label
            "a@example.",        // root dot
            "a@exa\u{ff20}mple", // full-width '@' maps to '@'
            "a@\u{200b}.example",
        ] {
            assert_eq!(normalize(bad), None, "{bad:?}");
        }
        let long_label = format!("a@{}.example", "x".repeat(64));
        assert_eq!(normalize(&long_label), None);
    }
}
