//! The provider's portal pages (templates in `src/portal/templates/`,
//! escaped by askama): an error that is never redirected, and consent.

use askama::Template;

use crate::portal::{Frame, View};

/// An authorization request that cannot go back to the client (unknown
/// client, unregistered redirect URI, a user without the client's roles).
pub struct ErrorPage<'a> {
    pub message: &'a str,
}

#[derive(Template)]
#[template(path = "oauth_error.html", config = "src/portal/askama.toml")]
struct ErrorHtml<'a> {
    frame: &'a Frame<'a>,
    title: &'a str,
    page: &'a ErrorPage<'a>,
}

impl View for ErrorPage<'_> {
    fn render_in(&self, frame: &Frame<'_>) -> askama::Result<String> {
        ErrorHtml {
            frame,
            title: "Sign-in refused",
            page: self,
        }
        .render()
    }
}

/// Asking the user to let a client sign them in with these scopes.
pub struct ConsentPage<'a> {
    pub client_id: &'a str,
    pub email: &'a str,
    pub scopes: Vec<String>,
    /// The authorization request's query, carried through the form.
    pub request: &'a str,
}

#[derive(Template)]
#[template(path = "oauth_consent.html", config = "src/portal/askama.toml")]
struct ConsentHtml<'a> {
    frame: &'a Frame<'a>,
    title: &'a str,
    page: &'a ConsentPage<'a>,
}

impl View for ConsentPage<'_> {
    fn render_in(&self, frame: &Frame<'_>) -> askama::Result<String> {
        ConsentHtml {
            frame,
            title: "Allow access",
            page: self,
        }
        .render()
    }
}
