//! The one mapping from what went wrong in the account service
//! ([`AccountError`]) to the API's error ([`ApiError`]: status, code and
//! message). No other place turns a domain outcome into a status.

use crate::accounts::AccountError;
use crate::error::ApiError;

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::Invalid(fields) => ApiError::Validation(fields),
            AccountError::WrongCredentials => ApiError::InvalidCredentials,
            AccountError::EmailNotVerified => ApiError::EmailNotVerified,
            AccountError::EmailTaken => ApiError::EmailTaken,
            // A link's token is a bad request; a session's is a 401.
            AccountError::BadLink | AccountError::BadCeremony => ApiError::InvalidToken(400),
            AccountError::BadSessionToken => ApiError::InvalidToken(401),
            AccountError::WrongCode => ApiError::InvalidCode,
            AccountError::NotSignedIn => ApiError::Unauthorized,
            AccountError::NotFound => ApiError::NotFound,
            AccountError::AlreadyEnrolled => ApiError::AlreadyEnrolled,
            AccountError::ReauthRequired => ApiError::ReauthRequired,
            AccountError::SignInAgain => {
                ApiError::BadRequest("This account re-authenticates by signing in again.")
            }
            AccountError::PasskeysUnavailable => {
                ApiError::BadRequest("Passkeys are not available on this deployment.")
            }
            AccountError::Throttled { retry_after } => ApiError::TooManyRequests { retry_after },
            AccountError::Changed => ApiError::Conflict,
            AccountError::Busy { retry_after, cause } => {
                ApiError::Unavailable { retry_after, cause }
            }
            AccountError::Internal(cause) => ApiError::Internal(cause),
        }
    }
}

/// A federation outcome's status on the JSON API (CONTRACT 8.1).
impl From<crate::accounts::federation::FedCode> for ApiError {
    fn from(code: crate::accounts::federation::FedCode) -> Self {
        use crate::accounts::federation::FedCode;
        let status = match code {
            FedCode::IdentityTaken | FedCode::LastSignInMethod | FedCode::AccountExists => 409,
            FedCode::UnknownProvider => 404,
            FedCode::AccountDisabled => 403,
            FedCode::ProviderError => 502,
            _ => 400,
        };
        ApiError::Coded {
            status,
            code: code.code(),
            message: code.message(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_account_error_has_its_status_and_code() {
        let cases: Vec<(AccountError, u16, &str)> = vec![
            (
                AccountError::invalid("email", "bad"),
                400,
                "validation_failed",
            ),
            (AccountError::WrongCredentials, 401, "invalid_credentials"),
            (AccountError::EmailNotVerified, 403, "email_not_verified"),
            (AccountError::EmailTaken, 409, "email_taken"),
            (AccountError::BadLink, 400, "invalid_token"),
            (AccountError::BadCeremony, 400, "invalid_token"),
            (AccountError::BadSessionToken, 401, "invalid_token"),
            (AccountError::WrongCode, 400, "invalid_code"),
            (AccountError::NotSignedIn, 401, "unauthorized"),
            (AccountError::NotFound, 404, "not_found"),
            (AccountError::AlreadyEnrolled, 409, "already_enrolled"),
            (AccountError::ReauthRequired, 403, "reauth_required"),
            (AccountError::SignInAgain, 400, "bad_request"),
            (AccountError::PasskeysUnavailable, 400, "bad_request"),
            (
                AccountError::Throttled { retry_after: 3 },
                429,
                "too_many_requests",
            ),
            (AccountError::Changed, 409, "conflict"),
            (
                AccountError::Busy {
                    retry_after: 1,
                    cause: "secret".into(),
                },
                503,
                "service_unavailable",
            ),
            (AccountError::internal("secret"), 500, "internal"),
        ];
        for (e, status, code) in cases {
            let api = ApiError::from(e);
            assert_eq!((api.status(), api.code()), (status, code));
        }
    }
}
