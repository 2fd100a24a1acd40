//! Reading the request body once (bounded in size and time) and reading only the fields
//! routing needs from it. The bytes themselves go upstream unchanged.

use std::borrow::Cow;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gateway_plugin_api::ApiError;
use pingora_core::protocols::http::ServerSession;
use serde::Deserialize;

use crate::errors;

/// Reads the whole body. Answers `Expect: 100-continue` first, refuses a declared
/// `Content-Length` over `limit` before reading a byte, and bounds the total read time (the
/// socket timeout is per read, so a trickling client could otherwise hold a slot forever).
pub async fn read_body(
    session: &mut ServerSession,
    limit: u64,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let declared = session
        .get_header("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(errors::body_too_large(limit));
    }
    let expects_continue = session
        .get_header("expect")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session
            .write_continue_response()
            .await
            .map_err(|e| errors::internal(&format!("writing 100 Continue: {e}")))?;
    }
    let read_all = async {
        let mut first: Option<Bytes> = None;
        let mut joined: Option<BytesMut> = None;
        let mut total: u64 = 0;
        while let Some(chunk) = session
            .read_request_body()
            .await
            .map_err(|e| errors::invalid_body(&e.to_string()))?
        {
            total += chunk.len() as u64;
            if total > limit {
                return Err(errors::body_too_large(limit));
            }
            // The common single-chunk body is kept as is; only multi-chunk bodies are joined.
            match (&mut first, &mut joined) {
                (None, None) => first = Some(chunk),
                (Some(f), None) => {
                    let mut buf =
                        BytesMut::with_capacity(declared.unwrap_or(0).max(total) as usize);
                    buf.extend_from_slice(f);
                    buf.extend_from_slice(&chunk);
                    joined = Some(buf);
                }
                (_, Some(buf)) => buf.extend_from_slice(&chunk),
            }
        }
        Ok(match joined {
            Some(buf) => buf.freeze(),
            None => first.unwrap_or_default(),
        })
    };
    tokio::time::timeout(timeout, read_all)
        .await
        .map_err(|_| errors::body_timeout(timeout))?
}

/// The only fields the gateway reads from an inference request.
#[derive(Debug, PartialEq, Eq)]
pub struct RoutingFields<'a> {
    pub model: Cow<'a, str>,
    pub stream: bool,
    pub max_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default)]
    model: Option<BorrowedStr<'a>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
}

/// A string that borrows from the body unless it has escapes. (serde's own `Cow<str>`
/// always copies inside an `Option`.)
struct BorrowedStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for BorrowedStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = BorrowedStr<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(Visit(std::marker::PhantomData))
    }
}

/// Parses `model` and `stream`, borrowing from `body`; every other field is skipped unread.
pub fn parse_routing_fields(body: &[u8]) -> Result<RoutingFields<'_>, ApiError> {
    let fields: Fields<'_> = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => errors::invalid_field(&e.to_string()),
        _ => errors::invalid_json(&e.to_string()),
    })?;
    match fields.model {
        Some(BorrowedStr(model)) if !model.is_empty() => Ok(RoutingFields {
            model,
            stream: fields.stream.unwrap_or(false),
            max_tokens: fields.max_completion_tokens.or(fields.max_tokens),
        }),
        _ => Err(errors::missing_model()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_model_and_stream_anywhere_in_the_object() {
        let body = br#"{"messages":[{"role":"user","content":"model \"x\""}],"stream":true,"model":"facebook/opt-125m","top_k":3}"#;
        let f = parse_routing_fields(body).expect("fields");
        assert_eq!(f.model, "facebook/opt-125m");
        assert!(f.stream);
        assert!(
            matches!(f.model, Cow::Borrowed(_)),
            "no copy for plain strings"
        );
    }

    #[test]
    fn escaped_model_names_are_decoded() {
        let f = parse_routing_fields(br#"{"model":"a\/b"}"#).expect("fields");
        assert_eq!(f.model, "a/b");
        assert!(!f.stream);
    }

    #[test]
    fn errors_are_400_with_the_right_code() {
        let code = |b: &[u8]| parse_routing_fields(b).err().map(|e| (e.status, e.code));
        assert_eq!(code(b"{not json"), Some((400, "invalid_json")));
        assert_eq!(code(b""), Some((400, "invalid_json")));
        assert_eq!(code(b"{}"), Some((400, "missing_model")));
        assert_eq!(code(br#"{"model":""}"#), Some((400, "missing_model")));
        assert_eq!(code(br#"{"model":5}"#), Some((400, "invalid_request")));
        assert_eq!(
            code(br#"{"model":"m","stream":"yes"}"#),
            Some((400, "invalid_request"))
        );
        assert_eq!(code(b"[1,2]"), Some((400, "invalid_request")));
    }
}
