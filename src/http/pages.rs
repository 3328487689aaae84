//! The two HTML answers of the JSON front door's email links when the
//! portal is off (the portal renders its own pages: `crate::portal::flow`);
//! the page itself is a template of [`crate::portal`].

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
    let page = crate::portal::ConfirmPage {
        title,
        button,
        action,
        with_password,
    };
    match crate::portal::confirm_link_page(&page) {
        Ok(html) => {
            let mut resp = ApiResponse::html(200, html);
            // Its one inline script is allowed by hash, not 'unsafe-inline'.
            for (name, value) in &mut resp.headers {
                if *name == "content-security-policy" {
                    *value = crate::portal::CONFIRM_CSP.clone();
                }
            }
            resp
        }
        Err(e) => crate::error::ApiError::internal(format!("confirm page: {e}")).into_response(),
    }
}
