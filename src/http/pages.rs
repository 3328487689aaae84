//! The two HTML answers of the JSON front door's email links when the
//! portal is off (the portal renders its own pages: `crate::auth::portal`).
//! Kept as plain functions for the portal's templates to take over.

use super::api::{ApiRequest, ApiResponse};

/// An email link's page, on the portal: the same query (the token) on the
/// portal's page for it.
pub fn portal_link(req: &ApiRequest, to: &str) -> ApiResponse {
    let token = req.query_param("token").unwrap_or_default();
    let enc: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
    ApiResponse::empty(302).with_header("location", format!("{to}?token={enc}"))
}

/// A minimal page that reads `token` from its own URL and confirms by POST,
/// so link-prefetching mail scanners never consume a token.
pub fn confirm_page(title: &str, button: &str, action: &str, with_password: bool) -> ApiResponse {
    let fields = if with_password {
        r#"<label>New password <input type="password" id="p1" autocomplete="new-password" required></label><br>
<label>Repeat it <input type="password" id="p2" autocomplete="new-password" required></label><br>"#
    } else {
        ""
    };
    let payload = if with_password {
        "{token: t, new_password: document.getElementById('p1').value, new_password_confirm: document.getElementById('p2').value}"
    } else {
        "{token: t}"
    };
    let html = format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><meta name="referrer" content="no-referrer"><title>{title}</title></head>
<body><h1>{title}</h1>
<form id="f">{fields}<button type="submit">{button}</button></form>
<p id="out"></p>
<script>
document.getElementById('f').addEventListener('submit', async (e) => {{
  e.preventDefault();
  const t = new URLSearchParams(location.search).get('token') || '';
  const r = await fetch('{action}', {{method: 'POST', headers: {{'content-type': 'application/json'}}, body: JSON.stringify({payload})}});
  document.getElementById('out').textContent = r.ok ? 'Done.' : 'This link is invalid or has expired.';
}});
</script></body></html>"#
    );
    ApiResponse::html(200, html)
}
