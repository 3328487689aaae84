//! The signed-in user's own account: profile, password change, sessions.

use uuid::Uuid;

use super::recovery::check_new_password;
use super::{check_username, lock_key, AccountError, AccountResult, Client, NewPassword};
use super::{password, AuthService};
use crate::audit;
use crate::mail;
use crate::store::{domain, SessionRecord, Sessions, StoreError, User, UserChange};
use crate::tokens::AccessClaims;

/// A live session of the user, and whether it is the caller's own.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub record: SessionRecord,
    pub current: bool,
}

impl AuthService {
    /// The signed-in user.
    pub async fn profile(&self, claims: &AccessClaims) -> AccountResult<User> {
        self.current_user(claims).await
    }

    /// Change the display name (`Some(None)` clears it; `None` changes
    /// nothing), on the record as it is now.
    pub async fn update_profile(
        &self,
        claims: &AccessClaims,
        username: Option<Option<String>>,
    ) -> AccountResult<User> {
        let user = self.current_user(claims).await?;
        if let Some(Some(u)) = &username {
            check_username(u).map_err(|p| AccountError::invalid("username", p))?;
        }
        let username = username.map(|u| u.filter(|u| !u.is_empty()));
        match self
            .change_user(user.id, UserChange::Profile { username }, None)
            .await
        {
            Ok(u) if !u.disabled => Ok(u),
            Ok(_) | Err(StoreError::Conflict) => Err(AccountError::NotSignedIn),
            Err(e) => Err(e.into()),
        }
    }

    /// Change the password, proving the current one (guesses count toward
    /// the lockout); every other session ends.
    pub async fn change_password(
        &self,
        claims: &AccessClaims,
        current: &str,
        new: NewPassword,
        client: &Client,
    ) -> AccountResult<()> {
        let user = self.current_user(claims).await?;
        let actx = client.audit();
        let uid = Some(claims.sub.as_str());
        let wrong = || {
            audit::event(&actx, "password_change", "failure", uid);
            AccountError::WrongCredentials
        };
        if current.chars().count() > password::MAX_LEN {
            return Err(wrong());
        }
        // A stolen access token must not allow unlimited guessing of the
        // password: these guesses count toward the account lockout.
        let reservation = self
            .reserve_guess(&lock_key(&user.email), &actx, "password_change", uid)
            .await?;
        if !self.hasher.verify(current, &user.password_hash).await? {
            self.guess_failed(reservation, &actx, uid).await?;
            return Err(wrong());
        }
        reservation.succeed().await?;
        check_new_password(&new, &user.email)?;
        let new_hash = self.hasher.hash(&new.password).await?;
        let keep = Uuid::parse_str(&claims.sid).ok();
        let notice = mail::password_changed_mail(&user.email, self.clock.now());
        let change = UserChange::SetPassword {
            hash: new_hash,
            expect_version: user.password_version,
            keep,
        };
        let ev = self
            .audit_event(&actx, "user.password_changed", "success", Some(user.id))
            .with("how", "change");
        let effects = crate::store::Effects::from(notice).audit(ev);
        match self.change_user_with(user.id, change, effects).await {
            Ok(_) => {}
            // The password (or the account) changed while this one was
            // checked: the password proved here is no longer current.
            Err(StoreError::Conflict) => return Err(wrong()),
            Err(e) => return Err(e.into()),
        }
        audit::event(&actx, "password_change", "success", uid);
        Ok(())
    }

    /// The user's live sessions.
    pub async fn sessions(&self, claims: &AccessClaims) -> AccountResult<Vec<SessionInfo>> {
        let user = self.current_user(claims).await?;
        let now = self.clock.now();
        let idle = self.cfg().tokens.refresh_idle_secs;
        Ok(self
            .store
            .list_sessions(user.id)
            .await?
            .into_iter()
            .filter(|s| domain::session_is_live(s, now, idle))
            .map(|s| SessionInfo {
                current: s.id.to_string() == claims.sid,
                record: s,
            })
            .collect())
    }

    /// End one of the user's own sessions (`NotFound` when none matches).
    pub async fn end_session(
        &self,
        claims: &AccessClaims,
        id: &str,
        client: &Client,
    ) -> AccountResult<()> {
        let user = self.current_user(claims).await?;
        let id = Uuid::parse_str(id).map_err(|_| AccountError::NotFound)?;
        // Only one of the caller's own sessions can match.
        let ev = self
            .audit_event(&client.audit(), "session.revoked", "success", Some(user.id))
            .with("session_id", id.to_string());
        if self
            .end_sessions_with(user.id, Sessions::One(id), false, ev.into())
            .await?
            == 0
        {
            return Err(AccountError::NotFound);
        }
        let ev = "session_revoked";
        audit::event(&client.audit(), ev, "success", Some(&claims.sub));
        Ok(())
    }
}
