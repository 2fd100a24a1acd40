//! Phase 3, read the body: once, bounded in size and time, and only the fields routing and
//! limits need are parsed from it. The bytes themselves go upstream unchanged.

use std::borrow::Cow;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gateway_plugin_api::{ApiError, RequestCtx};
use pingora_core::protocols::http::ServerSession;
use serde::Deserialize;

use crate::config::{ServerConfig, MAX_MODEL_NAME};
use crate::errors;
use crate::routing::Api;

/// Reads the body and records what routing and limits need in `ctx`.
pub async fn read(
    session: &mut ServerSession,
    settings: &ServerConfig,
    ctx: &mut RequestCtx,
    api: Api,
) -> Result<Bytes, ApiError> {
    let body = read_body(
        session,
        settings.max_request_body,
        settings.client_body_timeout,
    )
    .await?;
    let fields = parse_routing_fields(&body, settings.max_tokens_limit)?;
    ctx.model = Some(fields.model.into_owned());
    ctx.stream = fields.stream && api != Api::Embeddings;
    ctx.max_tokens = fields.max_tokens;
    ctx.choices = fields.choices;
    ctx.body_bytes = body.len() as u64;
    Ok(body)
}

/// Before reading a body: refuses a declared `Content-Length` over `limit` (413 naming
/// `shown`, the limit the client knows of) before a byte is read, and answers
/// `Expect: 100-continue` (curl waits about a second for it on bodies over 1 KiB).
pub async fn expect_body(
    session: &mut ServerSession,
    limit: u64,
    shown: u64,
) -> Result<(), ApiError> {
    let declared = session
        .get_header(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(errors::body_too_large(shown));
    }
    let expects_continue = session
        .get_header(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session
            .write_continue_response()
            .await
            .map_err(|e| errors::internal(&format!("writing 100 Continue: {e}")))?;
    }
    Ok(())
}

/// Reads the whole body. Answers `Expect: 100-continue` first, refuses a declared
/// `Content-Length` over `limit` before reading a byte, and bounds the total read time (the
/// socket timeout is per read, so a trickling client could otherwise hold a slot forever).
pub async fn read_body(
    session: &mut ServerSession,
    limit: u64,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    expect_body(session, limit, limit).await?;
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
                // Grown as bytes arrive, never to the declared length up front: a client
                // that declares 10 MiB and sends ten bytes costs ten bytes.
                (Some(f), None) => {
                    let mut buf = BytesMut::with_capacity(f.len() + chunk.len());
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
    pingora_timeout::timeout(timeout, read_all)
        .await
        .map_err(|_| errors::body_timeout(timeout))?
}

/// The only fields the gateway reads from an inference request, validated: these reach the
/// limiter's arithmetic and the logs.
#[derive(Debug, PartialEq, Eq)]
pub struct RoutingFields<'a> {
    pub model: Cow<'a, str>,
    pub stream: bool,
    /// `max_completion_tokens`, else `max_tokens`; within `1..=max_tokens_limit`.
    pub max_tokens: Option<u64>,
    /// `n`: choices to generate, within `1..=MAX_CHOICES`.
    pub choices: u32,
}

/// OpenAI's own bound on `n`.
pub const MAX_CHOICES: u64 = 128;

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default)]
    model: Option<BorrowedStr<'a>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Count,
    #[serde(default)]
    max_completion_tokens: Count,
    #[serde(default)]
    n: Count,
}

/// A count as a client wrote it: any JSON value is accepted here, so that a bad one gets an
/// error naming its parameter rather than a parser message.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Count {
    /// Absent or `null`.
    #[default]
    Unset,
    /// A whole number (an integral float such as `100.0` included, as vLLM accepts it).
    Whole(u64),
    /// Negative, fractional, beyond u64, or not a number.
    Bad,
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a count")
            }
            fn visit_u64<E>(self, v: u64) -> Result<Count, E> {
                Ok(Count::Whole(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Count, E> {
                Ok(u64::try_from(v).map_or(Count::Bad, Count::Whole))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Count, E> {
                // 2^53: beyond it a float is not a count anyone meant.
                let whole = v.fract() == 0.0 && (0.0..9.007_199_254_740_992e15).contains(&v);
                Ok(if whole {
                    Count::Whole(v as u64)
                } else {
                    Count::Bad
                })
            }
            fn visit_unit<E>(self) -> Result<Count, E> {
                Ok(Count::Unset)
            }
            fn visit_none<E>(self) -> Result<Count, E> {
                Ok(Count::Unset)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Count, E> {
                Ok(Count::Bad)
            }
            fn visit_str<E>(self, _: &str) -> Result<Count, E> {
                Ok(Count::Bad)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Count, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Count::Bad)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Count, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Count::Bad)
            }
        }
        deserializer.deserialize_any(Visit)
    }
}

/// A count parameter within `1..=max`, or a 400 naming it.
fn bounded(count: Count, param: &'static str, max: u64) -> Result<Option<u64>, ApiError> {
    match count {
        Count::Unset => Ok(None),
        Count::Whole(v) if (1..=max).contains(&v) => Ok(Some(v)),
        _ => Err(errors::invalid_parameter(
            param,
            format!("`{param}` must be an integer from 1 to {max} on this gateway."),
        )),
    }
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

/// Parses `model`, `stream`, `max_tokens` / `max_completion_tokens` and `n`, borrowing from
/// `body`; every other field is skipped unread. Counts outside `1..=max_tokens_limit` (and
/// `1..=128` for `n`) and model names no pool could serve are 400s before anything else
/// happens to the request.
pub fn parse_routing_fields(
    body: &[u8],
    max_tokens_limit: u64,
) -> Result<RoutingFields<'_>, ApiError> {
    let fields: Fields<'_> = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => errors::invalid_field(&e.to_string()),
        _ => errors::invalid_json(&e.to_string()),
    })?;
    let model = match fields.model {
        Some(BorrowedStr(model)) if !model.is_empty() => model,
        _ => return Err(errors::missing_model()),
    };
    if model.len() > MAX_MODEL_NAME {
        return Err(errors::model_name_too_long(MAX_MODEL_NAME));
    }
    let max_completion_tokens = bounded(
        fields.max_completion_tokens,
        "max_completion_tokens",
        max_tokens_limit,
    )?;
    let max_tokens = bounded(fields.max_tokens, "max_tokens", max_tokens_limit)?;
    let choices = bounded(fields.n, "n", MAX_CHOICES)?.unwrap_or(1);
    Ok(RoutingFields {
        model,
        stream: fields.stream.unwrap_or(false),
        max_tokens: max_completion_tokens.or(max_tokens),
        choices: u32::try_from(choices).unwrap_or(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = 1 << 20;

    #[test]
    fn reads_model_and_stream_anywhere_in_the_object() {
        let body = br#"{"messages":[{"role":"user","content":"model \"x\""}],"stream":true,"model":"facebook/opt-125m","top_k":3}"#;
        let f = parse_routing_fields(body, LIMIT).expect("fields");
        assert_eq!(f.model, "facebook/opt-125m");
        assert!(f.stream);
        assert!(
            matches!(f.model, Cow::Borrowed(_)),
            "no copy for plain strings"
        );
    }

    #[test]
    fn escaped_model_names_are_decoded() {
        let f = parse_routing_fields(br#"{"model":"a\/b"}"#, LIMIT).expect("fields");
        assert_eq!(f.model, "a/b");
        assert!(!f.stream);
    }

    #[test]
    fn errors_are_400_with_the_right_code() {
        let code = |b: &[u8]| {
            parse_routing_fields(b, LIMIT)
                .err()
                .map(|e| (e.status, e.code))
        };
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

    #[test]
    fn counts_outside_their_bounds_are_400s_naming_the_parameter() {
        let param = |b: &str| {
            parse_routing_fields(b.as_bytes(), LIMIT)
                .err()
                .map(|e| (e.status, e.code, e.param))
        };
        for bad in [
            "0",
            "-1",
            "1048577",
            "9223372036854775807",
            "18446744073709551615",
            "18446744073709551616",
            "1e300",
            "1.5",
            "\"100\"",
            "true",
            "[100]",
            "{}",
        ] {
            assert_eq!(
                param(&format!(r#"{{"model":"m","max_tokens":{bad}}}"#)),
                Some((400, "invalid_value", Some("max_tokens"))),
                "max_tokens {bad}"
            );
            assert_eq!(
                param(&format!(r#"{{"model":"m","max_completion_tokens":{bad}}}"#)),
                Some((400, "invalid_value", Some("max_completion_tokens"))),
                "max_completion_tokens {bad}"
            );
        }
        assert_eq!(
            param(r#"{"model":"m","n":129}"#),
            Some((400, "invalid_value", Some("n")))
        );
        let model = format!(r#"{{"model":"{}"}}"#, "m".repeat(257));
        assert_eq!(param(&model), Some((400, "invalid_value", Some("model"))));
    }

    #[test]
    fn sane_counts_pass_and_null_means_unset() {
        let f = parse_routing_fields(
            br#"{"model":"m","max_tokens":100.0,"max_completion_tokens":null,"n":4}"#,
            LIMIT,
        )
        .expect("fields");
        assert_eq!((f.max_tokens, f.choices), (Some(100), 4));
        let f = parse_routing_fields(
            br#"{"model":"m","max_tokens":7,"max_completion_tokens":9}"#,
            LIMIT,
        )
        .expect("fields");
        assert_eq!(f.max_tokens, Some(9), "max_completion_tokens wins");
        let f = parse_routing_fields(br#"{"model":"m","max_tokens":1048576}"#, LIMIT)
            .expect("the limit itself");
        assert_eq!((f.max_tokens, f.choices), (Some(LIMIT), 1));
    }
}
