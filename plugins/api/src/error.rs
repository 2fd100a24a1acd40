//! OpenAI-shaped errors: `{"error":{"message","type","code","param"}}`.

use std::fmt;

/// An error the gateway (or a plugin) answers with instead of a backend response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    /// OpenAI `type`, e.g. `invalid_request_error`, `authentication_error`.
    pub kind: &'static str,
    /// OpenAI `code`, e.g. `model_not_found`; also the gateway's error code in logs.
    pub code: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
    /// Extra response headers (e.g. `Retry-After`, `WWW-Authenticate`).
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, code: &'static str, message: String) -> Self {
        ApiError {
            status,
            kind,
            code,
            message,
            param: None,
            headers: Vec::new(),
        }
    }

    pub fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// 401 with `WWW-Authenticate: Bearer`; `message` should say what to do.
    pub fn unauthorized(code: &'static str, message: String) -> Self {
        ApiError::new(401, "authentication_error", code, message)
            .with_header("www-authenticate", "Bearer".into())
    }

    /// 403: authenticated, but not allowed to use this.
    pub fn permission_denied(message: String) -> Self {
        ApiError::new(403, "permission_error", "permission_denied", message)
    }

    /// 503: the identity provider cannot be reached; not the user's fault, retry later.
    pub fn auth_unavailable(message: String, retry_after_secs: u64) -> Self {
        ApiError::new(503, "service_unavailable", "auth_unavailable", message)
            .with_header("retry-after", retry_after_secs.max(1).to_string())
    }

    /// The JSON body, as OpenAI writes it.
    pub fn body(&self) -> Vec<u8> {
        let body = serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "code": self.code,
                "param": self.param,
            }
        });
        // Serialising a `Value` of strings cannot fail.
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_openai_shaped() {
        let err = ApiError::new(404, "invalid_request_error", "model_not_found", "no".into())
            .with_param("model");
        let v: serde_json::Value = serde_json::from_slice(&err.body()).expect("json");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(v["error"]["message"], "no");
    }
}
