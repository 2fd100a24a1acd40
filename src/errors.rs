//! The gateway's own errors, each an OpenAI-shaped [`ApiError`] with the status the usage
//! guide promises. Built here, written to the client at one place (`proxy::respond`).

use std::time::Duration;

use gateway_plugin_api::{ApiError, Principal};

const INVALID: &str = "invalid_request_error";

pub fn invalid_json(detail: &str) -> ApiError {
    ApiError::new(
        400,
        INVALID,
        "invalid_json",
        format!("The request body is not valid JSON: {detail}"),
    )
}

pub fn missing_model() -> ApiError {
    ApiError::new(
        400,
        INVALID,
        "missing_model",
        "The request body must be a JSON object with a string `model` field.".into(),
    )
    .with_param("model")
}

pub fn body_too_large(limit: u64) -> ApiError {
    ApiError::new(
        413,
        INVALID,
        "request_too_large",
        format!("The request body is larger than this gateway's limit of {limit} bytes."),
    )
}

pub fn body_timeout(limit: Duration) -> ApiError {
    ApiError::new(
        408,
        INVALID,
        "request_timeout",
        format!("The request body did not arrive within {limit:?}."),
    )
}

/// `on` is the (cluster, framework) of a targeted route.
pub fn model_not_found(model: &str, on: Option<(&str, &str)>) -> ApiError {
    let message = match on {
        None => format!("The model `{model}` does not exist or is not served by this gateway."),
        Some((cluster, framework)) => format!(
            "The model `{model}` is not served by cluster `{cluster}` with framework `{framework}`."
        ),
    };
    ApiError::new(404, INVALID, "model_not_found", message).with_param("model")
}

pub fn model_forbidden(model: &str, principal: Option<&Principal>) -> ApiError {
    let who = principal.map_or("anonymous".to_string(), |p| format!("`{}`", p.username));
    ApiError::permission_denied(format!(
        "Your identity {who} is not allowed to use the model `{model}`: access is limited to \
         certain groups or identity providers. Ask the gateway's administrators for access."
    ))
}

/// `hint`: how to get a token, from the configured auth plugin (`Plugin::credential_hint`).
pub fn missing_token(hint: Option<&str>) -> ApiError {
    let how = hint.map(|h| format!(" ({h})")).unwrap_or_default();
    ApiError::unauthorized(
        "missing_token",
        format!(
            "Missing or unrecognised bearer token: send `Authorization: Bearer $MY_TOKEN` with a \
             valid access token{how}."
        ),
    )
}

/// At most this much of a client's path is echoed back.
const PATH_ECHO: usize = 256;

pub fn not_found(path: &str) -> ApiError {
    let shown = match path.char_indices().nth(PATH_ECHO) {
        Some((cut, _)) => format!("{}…", path.get(..cut).unwrap_or_default()),
        None => path.to_string(),
    };
    ApiError::new(
        404,
        INVALID,
        "not_found",
        format!("No route for `{shown}`."),
    )
}

/// A request parameter outside what the gateway accepts (before any budget is touched).
pub fn invalid_parameter(param: &'static str, message: String) -> ApiError {
    ApiError::new(400, INVALID, "invalid_value", message).with_param(param)
}

pub fn model_name_too_long(limit: usize) -> ApiError {
    ApiError::new(
        400,
        INVALID,
        "invalid_value",
        format!("The `model` field is longer than {limit} bytes; no model has such a name."),
    )
    .with_param("model")
}

/// Past `max_connections`: shed load before file descriptors run out.
pub fn too_many_connections() -> ApiError {
    ApiError::new(
        503,
        "service_unavailable",
        "too_many_connections",
        "The gateway is serving as many connections as it may; try again shortly.".into(),
    )
    .with_header("retry-after", "1".into())
}

pub fn method_not_allowed(method: &str, allowed: &'static str) -> ApiError {
    ApiError::new(
        405,
        INVALID,
        "method_not_allowed",
        format!("Method {method} is not allowed here; use {allowed}."),
    )
    .with_header("allow", allowed.into())
}

pub fn no_healthy_backend(pool: &str, retry_after: Duration) -> ApiError {
    ApiError::new(
        503,
        "service_unavailable",
        "no_healthy_backend",
        format!("No healthy backend is available in pool `{pool}`; try again shortly."),
    )
    .with_header("retry-after", retry_after.as_secs().max(1).to_string())
}

pub fn backends_refused(pool: &str, attempts: u32) -> ApiError {
    ApiError::new(
        502,
        "upstream_error",
        "upstream_connect_failed",
        format!("Could not connect to any backend of pool `{pool}` ({attempts} attempts)."),
    )
}

pub fn gateway_overloaded() -> ApiError {
    ApiError::new(
        503,
        "service_unavailable",
        "gateway_overloaded",
        "The gateway has no connection left to reach a backend; try again shortly.".into(),
    )
    .with_header("retry-after", "1".into())
}

pub fn upstream_failed(pool: &str) -> ApiError {
    ApiError::new(
        502,
        "upstream_error",
        "upstream_error",
        format!("The backend of pool `{pool}` closed the connection or sent an invalid response."),
    )
}

pub fn upstream_timeout(pool: &str, idle: Duration) -> ApiError {
    ApiError::new(
        504,
        "upstream_error",
        "upstream_timeout",
        format!("The backend of pool `{pool}` sent nothing for {idle:?}."),
    )
}

pub fn internal(detail: &str) -> ApiError {
    ApiError::new(
        500,
        "server_error",
        "internal_error",
        format!("Internal gateway error: {detail}"),
    )
}

pub fn invalid_field(detail: &str) -> ApiError {
    ApiError::new(
        400,
        INVALID,
        "invalid_request",
        format!("The request body is not a valid request: {detail}"),
    )
}

pub fn invalid_body(detail: &str) -> ApiError {
    ApiError::new(
        400,
        INVALID,
        "invalid_body",
        format!("The request body could not be read: {detail}"),
    )
}

/// Why no pool could take `model` (on `target`, for `principal`), as the client's error.
pub fn unresolved(
    why: crate::routing::Unresolved,
    model: &str,
    target: Option<crate::routing::Target<'_>>,
    principal: Option<&Principal>,
) -> ApiError {
    use crate::routing::Unresolved;
    match why {
        Unresolved::UnknownModel => model_not_found(model, None),
        Unresolved::NotOnTarget => model_not_found(model, target.map(|t| (t.cluster, t.framework))),
        Unresolved::Forbidden => model_forbidden(model, principal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_errors_name_the_model_and_where_it_was_looked_for() {
        let err = model_not_found("gpt-17", None);
        assert_eq!((err.status, err.code), (404, "model_not_found"));
        assert!(err.message.contains("gpt-17"));
        let err = model_not_found("m1", Some(("sophia", "vllm")));
        assert!(
            err.message.contains("m1") && err.message.contains("sophia"),
            "{}",
            err.message
        );
        let outsider = Principal {
            username: "bob@example.org".into(),
            ..Principal::default()
        };
        let err = model_forbidden("secret", Some(&outsider));
        assert_eq!((err.status, err.code), (403, "permission_denied"));
        assert!(err.message.contains("bob@example.org"));
        assert_eq!(model_forbidden("secret", None).status, 403);
    }
}
