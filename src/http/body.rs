//! Request bodies: `application/json` objects parsed into the request types
//! of [`crate::wire`] (the same types the OpenAPI document is generated
//! from), with every field problem collected into one `validation_failed`.
//!
//! The request types hold each field as a [`Field`], so a missing, `null`
//! or mistyped field never fails the parse: it is judged afterwards by
//! [`Read::required`]/[`Read::optional`], which record the problem under
//! the field's name ("is required", "must be a string"). Only a body that
//! is not a JSON object is a `bad_request`.

use serde::de::DeserializeOwned;

use super::api::ApiRequest;
use crate::accounts::FieldErrors;
use crate::error::ApiError;
use crate::wire::Field;

/// Parse a JSON request body: right content type, valid UTF-8 JSON object.
pub fn json_value(req: &ApiRequest) -> Result<serde_json::Value, ApiError> {
    json_object(req.header("content-type"), &req.body)
}

/// A body that must be a JSON object, given its `Content-Type`: 415 for
/// another type, 400 for an empty body, bad JSON or a non-object.
pub fn json_object(content_type: Option<&str>, body: &[u8]) -> Result<serde_json::Value, ApiError> {
    let ct = content_type.unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::UnsupportedMediaType);
    }
    if body.is_empty() {
        return Err(ApiError::BadRequest("The request body is empty."));
    }
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::BadRequest("The request body is not valid JSON."))?;
    if !v.is_object() {
        return Err(ApiError::BadRequest("The body must be a JSON object."));
    }
    Ok(v)
}

/// A request body as its wire type (see the module docs).
pub fn parse<T: DeserializeOwned>(req: &ApiRequest) -> Result<T, ApiError> {
    from_value(json_value(req)?)
}

/// A JSON object as a wire type.
pub fn from_value<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|_| ApiError::BadRequest("The body must be a JSON object."))
}

/// A body that may be empty (`{}` then).
pub fn parse_or_empty<T: DeserializeOwned>(req: &ApiRequest) -> Result<T, ApiError> {
    if req.body.is_empty() {
        return from_value(serde_json::Value::Object(Default::default()));
    }
    parse(req)
}

/// Judging a string [`Field`], recording its problem.
pub trait Read {
    /// The value, or "is required" (absent or `null`) / "must be a string".
    fn required(self, name: &str, errs: &mut FieldErrors) -> Option<String>;
    /// The value if present; "must be a string" when of another type.
    fn optional(self, name: &str, errs: &mut FieldErrors) -> Option<String>;
    /// Required only when `needed` (else as [`Read::optional`]).
    fn required_if(self, needed: bool, name: &str, errs: &mut FieldErrors) -> Option<String>
    where
        Self: Sized,
    {
        if needed {
            self.required(name, errs)
        } else {
            self.optional(name, errs)
        }
    }
}

impl Read for Field<String> {
    fn required(self, name: &str, errs: &mut FieldErrors) -> Option<String> {
        match self {
            Field::Value(s) => Some(s),
            Field::Absent | Field::Null => {
                errs.add(name, "is required");
                None
            }
            Field::Wrong => {
                errs.add(name, "must be a string");
                None
            }
        }
    }

    fn optional(self, name: &str, errs: &mut FieldErrors) -> Option<String> {
        match self {
            Field::Value(s) => Some(s),
            Field::Absent | Field::Null => None,
            Field::Wrong => {
                errs.add(name, "must be a string");
                None
            }
        }
    }
}

/// The field problems as the API's `validation_failed`.
pub fn finish(errs: FieldErrors) -> Result<(), ApiError> {
    errs.finish().map_err(ApiError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::LoginRequest;

    #[test]
    fn fields_are_judged_not_parsed() {
        let r: LoginRequest =
            from_value(serde_json::json!({"email": 5, "password": null, "x": 1})).unwrap();
        let mut errs = FieldErrors::default();
        assert_eq!(r.email.required("email", &mut errs), None);
        assert_eq!(r.password.required("password", &mut errs), None);
        assert_eq!(r.refresh_token.optional("refresh_token", &mut errs), None);
        assert_eq!(errs.0["email"], vec!["must be a string".to_string()]);
        assert_eq!(errs.0["password"], vec!["is required".to_string()]);
        assert!(!errs.has("refresh_token"));
    }
}
