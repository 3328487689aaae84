//! `portcullis policy explain` and `POST /admin/explain` (CONTRACT 8.4):
//! the decision the config would take for a method, URL, identity, client
//! IP and time, with the route and the rule that decided.
//!
//! It runs the proxy's own steps, not a copy: [`crate::config::Config::match_route`],
//! then [`identity::gate`], [`identity::mode_for`], [`identity::when_anonymous`]
//! and [`identity::permits`]. What it cannot know it assumes: a signed-in
//! user used every factor the account has (TOTP or a passkey counts as the
//! second one), and an anonymous GET or HEAD is a browser navigation (so
//! with `[browser]` on it is sent to the portal, 302).

use std::net::{IpAddr, Ipv4Addr};

use http::Method;
use serde::{Deserialize, Serialize};

use super::identity::{self, Who};
use crate::config::{AuthMode, Config};

/// What is asked (the JSON body of `POST /admin/explain`, and the CLI's
/// flags).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Question {
    pub method: String,
    /// `https://host/path?query`, or just `/path?query` (any host).
    pub url: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub api_key_scopes: Option<Vec<String>>,
    #[serde(default)]
    pub ip: Option<String>,
    /// RFC 3339; default: now.
    #[serde(default)]
    pub at: Option<String>,
}

/// The matched route: its place in the file, its host and prefix.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RouteRef {
    pub index: usize,
    pub host: String,
    pub prefix: String,
}

/// The decision (`allow`, `302`, `400`, `401`, `403`, `404`) and the rule
/// that took it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Answer {
    pub route: Option<RouteRef>,
    pub decision: String,
    pub rule: String,
}

impl Answer {
    pub fn allowed(&self) -> bool {
        self.decision == "allow"
    }
}

/// The identity the question names, resolved (the email looked up).
#[derive(Debug, Clone)]
pub enum Asked {
    Anonymous,
    User {
        roles: Vec<String>,
        second_factor: bool,
    },
    Key {
        roles: Vec<String>,
        scopes: Vec<String>,
    },
}

/// A question whose arguments are wrong (exit 2, or 400).
#[derive(Debug)]
pub struct BadQuestion(pub String);

/// The parsed parts of a question that need no store.
pub struct Parsed {
    pub method: Method,
    host: Option<String>,
    path: String,
    query: Option<String>,
    pub ip: IpAddr,
    pub at: Option<i64>,
}

impl Question {
    pub fn parse(&self) -> Result<Parsed, BadQuestion> {
        let bad = |m: String| BadQuestion(m);
        let method = Method::from_bytes(self.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| bad(format!("'{}' is not an HTTP method", self.method)))?;
        let (host, rest) = if self.url.starts_with('/') {
            (None, self.url.as_str())
        } else {
            let u = self
                .url
                .strip_prefix("https://")
                .or_else(|| self.url.strip_prefix("http://"))
                .ok_or_else(|| {
                    bad(format!(
                        "'{}' is not /path or http(s)://host/path",
                        self.url
                    ))
                })?;
            let cut = u.find(['/', '?']).unwrap_or(u.len());
            let rest = if u[cut..].starts_with('?') || cut == u.len() {
                // `https://host?q` asks for `/`.
                return Ok(Parsed {
                    method,
                    host: Some(u[..cut].to_string()),
                    path: "/".into(),
                    query: u[cut..].strip_prefix('?').map(str::to_string),
                    ip: self.ip()?,
                    at: self.at()?,
                });
            } else {
                &u[cut..]
            };
            (Some(u[..cut].to_string()), rest)
        };
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (rest.to_string(), None),
        };
        Ok(Parsed {
            method,
            host,
            path,
            query,
            ip: self.ip()?,
            at: self.at()?,
        })
    }

    fn ip(&self) -> Result<IpAddr, BadQuestion> {
        match &self.ip {
            None => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Some(s) => s
                .parse()
                .map_err(|_| BadQuestion(format!("'{s}' is not an IP address"))),
        }
    }

    fn at(&self) -> Result<Option<i64>, BadQuestion> {
        match &self.at {
            None => Ok(None),
            Some(s) => {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .map(|t| Some(t.unix_timestamp()))
                    .map_err(|_| BadQuestion(format!("'{s}' is not an RFC 3339 time")))
            }
        }
    }
}

/// The identity a store user signs in as (see the module docs); a
/// disabled account signs in as nobody.
pub fn asked_for_user(u: &crate::store::User, key_scopes: Option<Vec<String>>) -> Asked {
    if u.disabled {
        return Asked::Anonymous;
    }
    match key_scopes {
        Some(scopes) => Asked::Key {
            roles: u.roles.clone(),
            scopes,
        },
        None => Asked::User {
            roles: u.roles.clone(),
            second_factor: u.totp.is_some() || !u.passkeys.is_empty(),
        },
    }
}

fn answer(route: Option<RouteRef>, decision: &str, rule: &str) -> Answer {
    Answer {
        route,
        decision: decision.into(),
        rule: rule.into(),
    }
}

/// The decision `cfg` takes on the question, at `now` unless it names a time.
pub fn decide(cfg: &Config, q: &Parsed, asked: &Asked, now: i64) -> Answer {
    let now = q.at.unwrap_or(now);
    let Ok(n) = crate::request_path::normalize_request(&q.path) else {
        return answer(None, "400", "path");
    };
    let local = super::is_local(&n.path);
    let idx = if local {
        None
    } else {
        cfg.match_route(q.host.as_deref(), &q.method, &n.path)
    };
    let rref = idx.map(|i| {
        let route = &cfg.routes[i];
        RouteRef {
            index: route.index,
            host: route.host.as_written(),
            prefix: route.prefix.clone(),
        }
    });
    // The proxy's order: path parameters, then the gateway's own paths,
    // then no route.
    if n.had_params && !idx.is_some_and(|i| cfg.routes[i].strip_path_params) {
        return answer(rref, "400", "path");
    }
    if local {
        return answer(None, "allow", "gateway");
    }
    let Some(idx) = idx else {
        return answer(None, "404", "no_route");
    };
    let route = &cfg.routes[idx];
    let refused = |r: identity::Refusal| answer(rref.clone(), &r.status().to_string(), r.rule());
    if let Err(r) = identity::gate(route, q.ip, || now) {
        return refused(r);
    }
    let mode = identity::mode_for(route, &q.method);
    let who = match (mode, asked) {
        (AuthMode::Public, _) | (_, Asked::Anonymous) => Who::Anonymous,
        (
            _,
            Asked::User {
                roles,
                second_factor,
            },
        ) => Who::User {
            roles,
            second_factor: *second_factor,
        },
        (_, Asked::Key { roles, scopes }) => Who::Key { roles, scopes },
    };
    if let Who::Anonymous = who {
        let navigation = q.method == Method::GET || q.method == Method::HEAD;
        let host = q.host.as_deref();
        if let Err(r) = identity::when_anonymous(mode, cfg, navigation, host, || match &q.query {
            Some(qs) => format!("{}?{qs}", n.path),
            None => n.path.clone(),
        }) {
            return refused(r);
        }
    }
    if let Err(r) = identity::permits(route, who) {
        return refused(r);
    }
    let rule = match (route.auth, mode, who) {
        (AuthMode::Public, ..) => "public",
        (AuthMode::Required, AuthMode::Optional, Who::Anonymous) => "public_methods",
        (_, _, Who::Anonymous) => "optional",
        _ => "authenticated",
    };
    answer(rref, "allow", rule)
}

/// The whole explanation, the store asked for the email: what the CLI (on
/// the database) and `POST /admin/explain` (on the running gateway) run.
pub async fn explain(
    cfg: &Config,
    store: Option<&dyn crate::store::Store>,
    q: &Question,
    now: i64,
) -> Result<Answer, BadQuestion> {
    let parsed = q.parse()?;
    let asked = match (&q.email, &q.api_key_scopes, store) {
        (Some(e), scopes, Some(store)) => {
            let email = crate::accounts::email::normalize(e)
                .ok_or_else(|| BadQuestion(format!("'{e}' is not an email address")))?;
            let user = store
                .find_user_by_email(&email)
                .await
                .map_err(|_| BadQuestion("the store could not be read".into()))?
                .ok_or_else(|| BadQuestion(format!("no user with the email '{e}'")))?;
            asked_for_user(&user, scopes.clone())
        }
        (Some(_), _, None) => return Err(BadQuestion("no store to look the email up in".into())),
        (None, Some(scopes), _) => Asked::Key {
            roles: vec![],
            scopes: scopes.clone(),
        },
        (None, None, _) => Asked::Anonymous,
    };
    Ok(decide(cfg, &parsed, &asked, now))
}
