//! Signing in with an outside provider (CONTRACT 8.1), the account side:
//! starting a sign-in, finishing it at the callback, the rules that decide
//! whose account it is (a linked identity; a first sign-in that makes an
//! account; linking by email only when both sides are verified), roles
//! from the provider, the second factor, linking and unlinking from a
//! signed-in account, the `login_code` of code mode and back-channel
//! logout. Audit and `portcullis_federated_logins_total{provider,outcome}`
//! happen here. The protocol is `crate::federation`.

use uuid::Uuid;

use super::{email, AccountError, AccountResult, AuthService, Client, Login};
use crate::audit;
use crate::config::IdentityProvider;
use crate::federation::client::{same_secret, CallbackParams, FedError, VerifiedIdentity};
use crate::federation::state::{FlowState, Mode, STATE_TTL_SECS};
use crate::store::{Effects, LinkOutcome, LinkedIdentity, UnlinkOutcome, User, UserChange};
use crate::tokens::AccessClaims;

/// A federation failure, as the callback shows it (`?error=` or a page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FedCode {
    AccountExists,
    SignupDisabled,
    EmailNotVerified,
    ProviderError,
    InvalidState,
    /// The identity belongs to another account (409).
    IdentityTaken,
    /// Unlinking would leave no way to sign in (409).
    LastSignInMethod,
    /// No such provider in `[[identity_providers]]` (404).
    UnknownProvider,
    /// The account is disabled.
    AccountDisabled,
}

impl FedCode {
    pub fn code(self) -> &'static str {
        match self {
            FedCode::AccountExists => "account_exists",
            FedCode::SignupDisabled => "signup_disabled",
            FedCode::EmailNotVerified => "email_not_verified",
            FedCode::ProviderError => "provider_error",
            FedCode::InvalidState => "invalid_state",
            FedCode::IdentityTaken => "identity_taken",
            FedCode::LastSignInMethod => "last_sign_in_method",
            FedCode::UnknownProvider => "not_found",
            FedCode::AccountDisabled => "account_disabled",
        }
    }

    /// What the person reads.
    pub fn message(self) -> &'static str {
        match self {
            FedCode::AccountExists => "An account with this email already exists. Sign in to it, then link this identity from your account page.",
            FedCode::SignupDisabled => "This provider cannot be used to create a new account.",
            FedCode::EmailNotVerified => "The provider did not confirm a verified email address for this identity.",
            FedCode::ProviderError => "The sign-in provider could not complete the sign-in. Try again later.",
            FedCode::InvalidState => "This sign-in link is invalid, expired or was already used. Start again.",
            FedCode::IdentityTaken => "This identity is already linked to another account.",
            FedCode::LastSignInMethod => "This is the account's last way to sign in.",
            FedCode::UnknownProvider => "No such sign-in provider.",
            FedCode::AccountDisabled => "This account is disabled.",
        }
    }
}

/// A sign-in about to leave for the provider.
#[derive(Debug, Clone)]
pub struct FedStart {
    /// Where to send the browser.
    pub authorize_url: String,
    /// The sealed state, for the `__Host-` state cookie.
    pub state_cookie: String,
}

/// What a finished callback leads to.
#[derive(Debug)]
pub enum FedDone {
    /// Browser mode: signed in (or the TOTP step).
    Login { login: Login, rd: String },
    /// Code mode: a single-use `login_code` to hand to `rd`.
    Code { login_code: String, rd: String },
    /// Linking mode: the identity is now this account's.
    Linked { rd: String },
}

/// A decided federated sign-in: whose account, with what.
pub(super) struct Decision {
    pub(super) user: User,
    pub(super) amr: Vec<String>,
    pub(super) needs_totp: bool,
}

/// Provider `amr` values that mean a second factor (with `trust_mfa`).
const MFA_AMR: [&str; 3] = ["mfa", "otp", "hwk"];

impl AuthService {
    /// The provider `id` as configured now (a reload may add or drop it).
    pub fn identity_provider(&self, id: &str) -> Result<IdentityProvider, FedCode> {
        self.cfg()
            .identity_providers
            .iter()
            .find(|p| p.id == id)
            .cloned()
            .ok_or(FedCode::UnknownProvider)
    }

    fn fed_count(&self, provider: &str, outcome: &str) {
        self.metrics.federated_login(provider, outcome);
    }

    fn fed_fail(
        &self,
        client: &Client,
        provider: &str,
        code: FedCode,
        why: &str,
        uid: Option<&str>,
    ) -> FedCode {
        self.fed_count(provider, code.code());
        audit::event(&client.audit(), "federated_login", code.code(), uid);
        tracing::info!(
            provider,
            outcome = code.code(),
            why,
            "federated sign-in refused"
        );
        code
    }

    /// Start a sign-in at `provider`: fresh state, nonce and PKCE verifier,
    /// sealed for the browser's state cookie. `rd` must already be checked
    /// (`browser::safe_redirect_for`). `link_user`: linking from a
    /// signed-in account.
    pub async fn federation_start(
        &self,
        provider: &str,
        rd: String,
        mode: Mode,
        link_user: Option<Uuid>,
    ) -> Result<FedStart, FedCode> {
        let p = self.identity_provider(provider)?;
        let state = self.entropy.token(24);
        let nonce = self.entropy.token(24);
        let verifier = self.entropy.token(32);
        let auth = self
            .federation
            .authorize(&p, state, nonce, verifier)
            .await
            .map_err(|e| {
                tracing::warn!(provider, error = %e, "federated sign-in cannot start");
                self.fed_count(provider, "provider_error");
                FedCode::ProviderError
            })?;
        let flow = FlowState {
            provider: p.id.clone(),
            state: auth.state,
            nonce: auth.nonce,
            verifier: auth.verifier,
            rd,
            mode,
            link_user,
            expires_at: self.clock.now() + STATE_TTL_SECS,
        };
        Ok(FedStart {
            authorize_url: auth.url,
            state_cookie: self.fed_sealer.seal("state", &flow),
        })
    }

    /// The state a callback's cookie holds, when it is authentic and
    /// unexpired: `rd` and mode are known from here on (they were checked
    /// at the start). Whether it is for the callback's provider is
    /// [`Self::federation_callback`]'s to judge (a mix-up is refused as
    /// `invalid_state`, to this `rd`).
    pub fn federation_flow(&self, cookie: Option<&str>) -> Option<FlowState> {
        let flow: FlowState = self.fed_sealer.open("state", cookie?)?;
        (flow.expires_at > self.clock.now()).then_some(flow)
    }

    /// Finish a sign-in at the callback. `flow` is the state cookie's
    /// (see [`Self::federation_flow`]; `None`: refused as `invalid_state`).
    pub async fn federation_callback(
        &self,
        provider: &str,
        flow: Option<FlowState>,
        params: CallbackParams,
        client: &Client,
    ) -> Result<FedDone, FedCode> {
        let p = self.identity_provider(provider)?;
        let fail = |code: FedCode, why: &str| self.fed_fail(client, provider, code, why, None);
        // Bound to this browser and to the provider that started it.
        let Some(flow) = flow else {
            return Err(fail(FedCode::InvalidState, "no valid state cookie"));
        };
        if flow.provider != p.id {
            return Err(fail(FedCode::InvalidState, "started at another provider"));
        }
        match params.state.as_deref() {
            Some(s) if same_secret(s, &flow.state) => {}
            _ => return Err(fail(FedCode::InvalidState, "state does not match")),
        }
        // Once: a replayed callback is refused, on every gateway.
        let key = format!("fedstate:{}", crate::tokens::jwt::token_hash(&flow.state));
        match self
            .store
            .hit_counter(&key, 1, STATE_TTL_SECS as u64 * 2, self.clock.now())
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(fail(FedCode::InvalidState, "state already used")),
            Err(_) => return Err(fail(FedCode::ProviderError, "store unavailable")),
        }
        if let Some(e) = params.error.as_deref() {
            let why = format!("the provider answered error '{}'", e.escape_debug());
            return Err(fail(FedCode::ProviderError, why.as_str()));
        }
        if let Err(e) = self
            .federation
            .check_response_issuer(&p, params.iss.as_deref())
            .await
        {
            let code = match e {
                FedError::Refused(_) => FedCode::InvalidState,
                FedError::Provider(_) => FedCode::ProviderError,
            };
            return Err(fail(code, e.to_string().as_str()));
        }
        let Some(code) = params
            .code
            .as_deref()
            .filter(|c| !c.is_empty() && c.len() <= 2048)
        else {
            return Err(fail(FedCode::ProviderError, "no code"));
        };
        let identity = match self
            .federation
            .finish(&p, code, &flow.nonce, &flow.verifier)
            .await
        {
            Ok(i) => i,
            Err(e) => return Err(fail(FedCode::ProviderError, e.to_string().as_str())),
        };
        if let Some(user_id) = flow.link_user {
            self.link_identity(&p, user_id, identity, client).await?;
            return Ok(FedDone::Linked { rd: flow.rd });
        }
        let decision = self.decide(&p, &identity, client).await?;
        match flow.mode {
            Mode::Browser => {
                let login = self
                    .complete(&p, decision, &identity, client)
                    .await
                    .map_err(|_| fail(FedCode::ProviderError, "the session could not start"))?;
                Ok(FedDone::Login { login, rd: flow.rd })
            }
            Mode::Code => {
                let login_code = self
                    .issue_login_code(&p, decision, &identity, client)
                    .await
                    .map_err(|_| fail(FedCode::ProviderError, "the session could not start"))?;
                Ok(FedDone::Code {
                    login_code,
                    rd: flow.rd,
                })
            }
        }
    }

    /// A sign-in with a verified identity, browser mode: the session (or
    /// the TOTP step).
    pub async fn federated_sign_in(
        &self,
        p: &IdentityProvider,
        identity: VerifiedIdentity,
        client: &Client,
    ) -> AccountResult<Login> {
        let d = self
            .decide(p, &identity, client)
            .await
            .map_err(|c| AccountError::invalid("identity", c.code()))?;
        self.complete(p, d, &identity, client).await
    }

    /// [`Self::federated_sign_in`] in code mode: the `login_code` for
    /// `POST /auth/oidc/exchange`.
    pub async fn federated_login_code(
        &self,
        p: &IdentityProvider,
        identity: VerifiedIdentity,
        client: &Client,
    ) -> AccountResult<String> {
        let d = self
            .decide(p, &identity, client)
            .await
            .map_err(|c| AccountError::invalid("identity", c.code()))?;
        self.issue_login_code(p, d, &identity, client).await
    }

    /// Whose account this identity signs in to, and how (the rules of
    /// CONTRACT 8.1). Roles are refreshed from the provider.
    async fn decide(
        &self,
        p: &IdentityProvider,
        identity: &VerifiedIdentity,
        client: &Client,
    ) -> Result<Decision, FedCode> {
        let provider = p.id.as_str();
        let fail = |code: FedCode, why: &str, uid: Option<&str>| {
            self.fed_fail(client, provider, code, why, uid)
        };
        let store_err = |_| fail(FedCode::ProviderError, "store unavailable", None);
        let mut user = None;
        for _ in 0..2 {
            if let Some(link) = self
                .store
                .find_identity(provider, &identity.subject)
                .await
                .map_err(store_err)?
            {
                user = self
                    .store
                    .find_user(link.user_id)
                    .await
                    .map_err(store_err)?;
                if user.is_none() {
                    return Err(fail(
                        FedCode::AccountDisabled,
                        "linked account is gone",
                        None,
                    ));
                }
                break;
            }
            let normalized = identity.email.as_deref().and_then(email::normalize);
            let existing = match &normalized {
                Some(e) => self.store.find_user_by_email(e).await.map_err(store_err)?,
                None => None,
            };
            if let Some(u) = existing {
                match self.link_by_email(p, identity, client, u).await? {
                    Some(u) => {
                        user = Some(u);
                        break;
                    }
                    None => continue,
                }
            }
            match self.sign_up(p, identity, client, normalized).await? {
                Some(new) => {
                    user = Some(new);
                    break;
                }
                None => continue,
            }
        }
        let Some(mut user) = user else {
            return Err(fail(FedCode::ProviderError, "no decision", None));
        };
        let uid = user.id.to_string();
        if user.disabled {
            return Err(fail(
                FedCode::AccountDisabled,
                "account disabled",
                Some(&uid),
            ));
        }
        if self.cfg().accounts.require_email_verification && !user.email_verified {
            return Err(fail(
                FedCode::EmailNotVerified,
                "account email not verified",
                Some(&uid),
            ));
        }
        user = self
            .refresh_roles(p, user, &identity.roles, client)
            .await
            .map_err(store_err)?;
        let provider_mfa =
            p.trust_mfa && identity.amr.iter().any(|a| MFA_AMR.contains(&a.as_str()));
        let mut amr = vec!["fed".to_string()];
        if provider_mfa {
            amr.push("mfa".into());
        }
        let totp = user.totp.as_ref().is_some_and(|t| t.confirmed);
        Ok(Decision {
            user,
            amr,
            needs_totp: totp && !provider_mfa,
        })
    }

    /// Link the identity to `u`, the local account with its email, where
    /// `link_by_email` allows it: `None` when a race means starting over.
    async fn link_by_email(
        &self,
        p: &IdentityProvider,
        identity: &VerifiedIdentity,
        client: &Client,
        u: User,
    ) -> Result<Option<User>, FedCode> {
        let provider = p.id.as_str();
        let fail = |code: FedCode, why: &str, uid: Option<&str>| {
            self.fed_fail(client, provider, code, why, uid)
        };
        let store_err = |_| fail(FedCode::ProviderError, "store unavailable", None);
        let uid = u.id.to_string();
        if !p.link_by_email {
            return Err(fail(
                FedCode::AccountExists,
                "email of a local account",
                Some(&uid),
            ));
        }
        if !identity.email_verified || !u.email_verified {
            // Linking an unverified email is the pre-account takeover.
            return Err(fail(
                FedCode::EmailNotVerified,
                "email not verified on both sides",
                Some(&uid),
            ));
        }
        let ev = self
            .audit_event(&client.audit(), "identity.linked", "by_email", Some(u.id))
            .with("provider", p.id.clone());
        let notice = crate::mail::identity_linked_mail(&u.email, &p.display_name, self.clock.now());
        match self
            .store
            .link_identity(
                self.new_link(identity, u.id),
                None,
                self.effects(Effects::from(notice).audit(ev)),
            )
            .await
            .map_err(store_err)?
        {
            LinkOutcome::Linked | LinkOutcome::AlreadyLinked => {
                self.mail_wake.notify_one();
                audit::event(&client.audit(), "identity_linked", "by_email", Some(&uid));
                Ok(Some(u))
            }
            LinkOutcome::Taken => Ok(None),
            LinkOutcome::ProviderInUse => Err(fail(
                FedCode::AccountExists,
                "account has another identity there",
                Some(&uid),
            )),
            LinkOutcome::NoUser => Err(fail(
                FedCode::AccountDisabled,
                "account disabled",
                Some(&uid),
            )),
            LinkOutcome::EmailTaken => Ok(None),
        }
    }

    /// A new account for the identity, where `allow_signup` allows it:
    /// `None` when a race means starting over.
    async fn sign_up(
        &self,
        p: &IdentityProvider,
        identity: &VerifiedIdentity,
        client: &Client,
        normalized: Option<String>,
    ) -> Result<Option<User>, FedCode> {
        let provider = p.id.as_str();
        let fail = |code: FedCode, why: &str, uid: Option<&str>| {
            self.fed_fail(client, provider, code, why, uid)
        };
        let store_err = |_| fail(FedCode::ProviderError, "store unavailable", None);
        if !p.allow_signup {
            return Err(fail(
                FedCode::SignupDisabled,
                "no account and sign-up is off",
                None,
            ));
        }
        let Some(email) = normalized else {
            return Err(fail(
                FedCode::EmailNotVerified,
                "no usable email for a new account",
                None,
            ));
        };
        if !identity.email_verified && self.cfg().accounts.require_email_verification {
            return Err(fail(
                FedCode::EmailNotVerified,
                "unverified email, verification required",
                None,
            ));
        }
        let new = User {
            email_verified: identity.email_verified,
            roles: identity.roles.clone(),
            ..User::new(self.entropy.uuid(), email, "", self.clock.now())
        };
        let created = self
            .audit_event(&client.audit(), "user.created", "success", Some(new.id))
            .with("provider", p.id.clone());
        let linked = self
            .audit_event(&client.audit(), "identity.linked", "signup", Some(new.id))
            .with("provider", p.id.clone());
        let effects = Effects::from(created).audit(linked);
        match self
            .store
            .link_identity(
                self.new_link(identity, new.id),
                Some(new.clone()),
                self.effects(effects),
            )
            .await
            .map_err(store_err)?
        {
            LinkOutcome::Linked => {
                let uid = new.id.to_string();
                self.metrics.auth_event("register", "success");
                audit::event(&client.audit(), "register", "federated", Some(&uid));
                Ok(Some(new))
            }
            // A racing first sign-in of the same identity won: use it.
            LinkOutcome::Taken | LinkOutcome::AlreadyLinked => Ok(None),
            LinkOutcome::EmailTaken => {
                Err(fail(FedCode::AccountExists, "email taken meanwhile", None))
            }
            LinkOutcome::ProviderInUse | LinkOutcome::NoUser => Err(fail(
                FedCode::ProviderError,
                "unexpected link outcome",
                None,
            )),
        }
    }

    fn new_link(&self, identity: &VerifiedIdentity, user_id: Uuid) -> LinkedIdentity {
        LinkedIdentity {
            provider: identity.provider.clone(),
            subject: identity.subject.clone(),
            user_id,
            email: identity.email.clone(),
            linked_at: self.clock.now(),
        }
    }

    /// The roles `role_map` can give are set to what the provider asserts
    /// now (added or removed, each applied to the current record); roles
    /// it cannot give are the gateway's own and stay.
    async fn refresh_roles(
        &self,
        p: &IdentityProvider,
        user: User,
        asserted: &[String],
        client: &Client,
    ) -> Result<User, crate::store::StoreError> {
        let changed = |key: &str, role: &str, id: Uuid| {
            let ev = self
                .audit_event(&client.audit(), "user.roles_changed", "success", Some(id))
                .with(key, role.to_string())
                .with("provider", p.id.clone());
            Effects::from(ev)
        };
        if p.roles_claim.is_none() {
            return Ok(user);
        }
        let mut user = user;
        for r in asserted {
            if !user.roles.contains(r) {
                let e = changed("added", r, user.id);
                user = self
                    .change_user_with(user.id, UserChange::AddRole(r.clone()), e)
                    .await?;
            }
        }
        let mappable: Vec<&String> = p.role_map.values().collect();
        let stale: Vec<String> = user
            .roles
            .iter()
            .filter(|r| mappable.contains(r) && !asserted.contains(r))
            .cloned()
            .collect();
        for r in stale {
            let e = changed("removed", &r, user.id);
            user = self
                .change_user_with(user.id, UserChange::RemoveRole(r), e)
                .await?;
        }
        Ok(user)
    }

    /// Turn a decision into tokens (or the TOTP step).
    async fn complete(
        &self,
        p: &IdentityProvider,
        d: Decision,
        identity: &VerifiedIdentity,
        client: &Client,
    ) -> AccountResult<Login> {
        let uid = d.user.id.to_string();
        if d.needs_totp {
            let fed = self.fed_binding(p, identity, &d.user).await?;
            let mfa_token = self.mfa_challenge(&d.user, client, Some(fed)).await?;
            self.fed_count(&p.id, "mfa_required");
            audit::event(
                &client.audit(),
                "federated_login",
                "mfa_required",
                Some(&uid),
            );
            return Ok(Login::MfaChallenge { mfa_token });
        }
        let (user, session) = self
            .fed_session(p, &d, identity, client, self.entropy.uuid())
            .await?;
        let signed = self.sign(&user, &session)?;
        self.fed_count(&p.id, "success");
        self.metrics.auth_event("login", "success");
        audit::event(&client.audit(), "federated_login", "success", Some(&uid));
        Ok(Login::Signed(Box::new(signed)))
    }

    /// Link a verified identity to a signed-in account (the flow started
    /// from `POST /auth/identities/{provider}` or the portal). The owner
    /// is told by mail.
    async fn link_identity(
        &self,
        p: &IdentityProvider,
        user_id: Uuid,
        identity: VerifiedIdentity,
        client: &Client,
    ) -> Result<(), FedCode> {
        let uid = user_id.to_string();
        let fail = |code: FedCode, why: &str| self.fed_fail(client, &p.id, code, why, Some(&uid));
        let store_err = |_| fail(FedCode::ProviderError, "store unavailable");
        let Some(user) = self.store.find_user(user_id).await.map_err(store_err)? else {
            return Err(fail(FedCode::AccountDisabled, "account gone"));
        };
        let notice =
            crate::mail::identity_linked_mail(&user.email, &p.display_name, self.clock.now());
        let ev = self
            .audit_event(&client.audit(), "identity.linked", "success", Some(user_id))
            .with("provider", p.id.clone());
        let outcome = self
            .store
            .link_identity(
                self.new_link(&identity, user_id),
                None,
                self.effects(Effects::from(notice).audit(ev)),
            )
            .await
            .map_err(store_err)?;
        match outcome {
            LinkOutcome::Linked => {
                self.mail_wake.notify_one();
                self.fed_count(&p.id, "linked");
                audit::event(&client.audit(), "identity_linked", "success", Some(&uid));
                Ok(())
            }
            LinkOutcome::AlreadyLinked => Ok(()),
            LinkOutcome::Taken => Err(fail(FedCode::IdentityTaken, "identity of another account")),
            LinkOutcome::ProviderInUse => Err(fail(
                FedCode::IdentityTaken,
                "account already has an identity there",
            )),
            LinkOutcome::NoUser | LinkOutcome::EmailTaken => {
                Err(fail(FedCode::AccountDisabled, "account disabled"))
            }
        }
    }

    /// `POST /auth/identities/{provider}`: recent sign-in needed; the URL
    /// to send the browser to (its state cookie comes with it).
    pub async fn start_linking(
        &self,
        claims: &AccessClaims,
        provider: &str,
        rd: String,
    ) -> AccountResult<Result<FedStart, FedCode>> {
        let user = self.current_user(claims).await?;
        self.require_recent(claims)?;
        Ok(self
            .federation_start(provider, rd, Mode::Browser, Some(user.id))
            .await)
    }

    /// `GET /auth/identities`.
    pub async fn identities(&self, claims: &AccessClaims) -> AccountResult<Vec<LinkedIdentity>> {
        let user = self.current_user(claims).await?;
        Ok(self.store.list_identities(user.id).await?)
    }

    /// `DELETE /auth/identities/{provider}`: recent sign-in needed; never
    /// the account's last way to sign in.
    pub async fn unlink_identity(
        &self,
        claims: &AccessClaims,
        provider: &str,
        client: &Client,
    ) -> AccountResult<Result<(), FedCode>> {
        let user = self.current_user(claims).await?;
        self.require_recent(claims)?;
        let uid = user.id.to_string();
        let ev = self
            .audit_event(
                &client.audit(),
                "identity.unlinked",
                "success",
                Some(user.id),
            )
            .with("provider", provider.to_string());
        let effects = self.effects(ev.into());
        Ok(
            match self
                .store
                .unlink_identity(user.id, provider, effects)
                .await?
            {
                UnlinkOutcome::Unlinked(_) => {
                    audit::event(&client.audit(), "identity_unlinked", "success", Some(&uid));
                    Ok(())
                }
                UnlinkOutcome::NotLinked => Err(FedCode::UnknownProvider),
                UnlinkOutcome::LastMethod => {
                    audit::event(
                        &client.audit(),
                        "identity_unlinked",
                        "last_sign_in_method",
                        Some(&uid),
                    );
                    Err(FedCode::LastSignInMethod)
                }
            },
        )
    }
}
