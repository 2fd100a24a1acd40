//! Reading and validating a batch input file, line by line, before any line is sent.
//!
//! Two line shapes: the usage guide's (`{"messages": [...], "max_tokens": 100}` for chat,
//! `{"prompt": ...}` for completions; `custom_id` becomes `line-N`, and the batch's model is
//! spliced into the body, the one documented rewrite of a client's JSON) and OpenAI's
//! (`{"custom_id", "method", "url", "body"}`, the body sent byte for byte). The file is read
//! in bounded lines and never held whole, so memory does not grow with its size.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

use super::store::StoredLine;
use crate::proxy::parse_routing_fields;

/// The endpoints a batch line may name.
pub const ENDPOINTS: [&str; 3] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];

/// Errors listed in a failed batch (OpenAI lists the first ones too).
pub const MAX_LISTED_ERRORS: usize = 100;

const MAX_CUSTOM_ID: usize = 512;

/// One entry of OpenAI's batch `errors.data`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LineError {
    pub code: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
    /// 1-based line of the input file; `None` for the file as a whole.
    pub line: Option<i64>,
}

impl LineError {
    fn at(line: i64, code: &'static str, message: String) -> LineError {
        LineError {
            code,
            message,
            param: None,
            line: Some(line),
        }
    }

    pub fn file(code: &'static str, message: String) -> LineError {
        LineError {
            code,
            message,
            param: None,
            line: None,
        }
    }
}

/// What every line must agree with.
pub struct Rules {
    /// The endpoint the batch was created for (door B); else the first line's.
    pub endpoint: Option<String>,
    /// The batch's model (door A); else the first line's.
    pub model: Option<String>,
    pub max_lines: u64,
    pub max_tokens_limit: u64,
}

/// Checks lines one at a time, remembering what later lines must agree with.
pub struct Validator {
    rules: Rules,
    pub lines: u64,
    pub errors: Vec<LineError>,
    /// Errors beyond the listed ones.
    pub more_errors: u64,
}

impl Validator {
    pub fn new(rules: Rules) -> Validator {
        Validator {
            rules,
            lines: 0,
            errors: Vec::new(),
            more_errors: 0,
        }
    }

    pub fn endpoint(&self) -> Option<&str> {
        self.rules.endpoint.as_deref()
    }

    pub fn model(&self) -> Option<&str> {
        self.rules.model.as_deref()
    }

    pub fn failed(&self) -> bool {
        !self.errors.is_empty()
    }

    pub fn record(&mut self, e: LineError) {
        if self.errors.len() < MAX_LISTED_ERRORS {
            self.errors.push(e);
        } else {
            self.more_errors += 1;
        }
    }

    /// Checks line `line_no` (1-based; blank lines are skipped by the caller). `Some` when
    /// the line is good. A repeated `custom_id` is found where the line is stored
    /// ([`duplicate`]): the store's unique index, not a set in memory.
    pub fn check(&mut self, line_no: i64, text: &str) -> Option<StoredLine> {
        self.lines += 1;
        if self.lines > self.rules.max_lines {
            if self.lines == self.rules.max_lines + 1 {
                self.record(LineError::at(
                    line_no,
                    "too_many_lines",
                    format!("The file has more than {} lines.", self.rules.max_lines),
                ));
            }
            return None;
        }
        match self.parse(line_no, text) {
            Ok(line) => Some(line),
            Err(e) => {
                self.record(e);
                None
            }
        }
    }

    fn parse(&mut self, line_no: i64, text: &str) -> Result<StoredLine, LineError> {
        let bad = |code, message: String| LineError::at(line_no, code, message);
        let fields: BTreeMap<String, &RawValue> = serde_json::from_str(text).map_err(|e| {
            bad(
                "invalid_json",
                format!("Line {line_no} is not a JSON object: {e}"),
            )
        })?;
        let (custom_id, url, body) = if fields.contains_key("custom_id") {
            openai_line(line_no, &fields)?
        } else {
            let url = if fields.contains_key("messages") {
                ENDPOINTS[0]
            } else if fields.contains_key("prompt") {
                ENDPOINTS[1]
            } else {
                return Err(bad(
                    "missing_required_parameter",
                    format!("Line {line_no} has neither `custom_id` (an OpenAI batch line) nor `messages` or `prompt`."),
                ));
            };
            let body = match (fields.contains_key("model"), &self.rules.model) {
                (true, _) => text.trim().to_string(),
                (false, Some(model)) => splice_model(text, model),
                (false, None) => {
                    return Err(bad(
                        "missing_required_parameter",
                        format!("Line {line_no} names no `model`."),
                    ))
                }
            };
            (format!("line-{line_no}"), url.to_string(), body)
        };
        match &self.rules.endpoint {
            Some(endpoint) if *endpoint != url => {
                return Err(bad(
                    "mismatched_endpoint",
                    format!("Line {line_no} is for `{url}`, the batch for `{endpoint}`."),
                ))
            }
            Some(_) => {}
            None => self.rules.endpoint = Some(url.clone()),
        }
        let routing = parse_routing_fields(body.as_bytes(), self.rules.max_tokens_limit)
            .map_err(|e| bad("invalid_body", format!("Line {line_no}: {}", e.message)))?;
        if routing.stream {
            return Err(bad(
                "invalid_body",
                format!("Line {line_no} asks for `stream: true`; batch lines are answered whole."),
            ));
        }
        match &self.rules.model {
            Some(model) if *model != routing.model => {
                return Err(bad(
                    "mismatched_model",
                    format!(
                        "Line {line_no} is for model `{}`, the batch for `{model}`.",
                        routing.model
                    ),
                ))
            }
            Some(_) => {}
            None => self.rules.model = Some(routing.model.into_owned()),
        }
        Ok(StoredLine {
            line_no,
            custom_id,
            url,
            body,
        })
    }
}

/// The error for line `line_no`, whose `custom_id` an earlier line has.
pub fn duplicate(line_no: i64) -> LineError {
    LineError::at(
        line_no,
        "duplicate_custom_id",
        format!("Line {line_no} repeats the `custom_id` of an earlier line."),
    )
}

/// `{"custom_id", "method", "url", "body"}`: the body is kept as the client wrote it.
fn openai_line(
    line_no: i64,
    fields: &BTreeMap<String, &RawValue>,
) -> Result<(String, String, String), LineError> {
    let bad = |code, message: String| LineError::at(line_no, code, message);
    let string = |key: &str| -> Result<String, LineError> {
        let raw = fields.get(key).ok_or_else(|| {
            bad(
                "missing_required_parameter",
                format!("Line {line_no} has no `{key}`."),
            )
        })?;
        serde_json::from_str::<String>(raw.get()).map_err(|_| {
            bad(
                "invalid_request",
                format!("Line {line_no}: `{key}` must be a string."),
            )
        })
    };
    let custom_id = string("custom_id")?;
    if custom_id.is_empty() || custom_id.len() > MAX_CUSTOM_ID {
        return Err(bad(
            "invalid_custom_id",
            format!("Line {line_no}: `custom_id` must be 1 to {MAX_CUSTOM_ID} bytes."),
        ));
    }
    let method = string("method")?;
    if method != "POST" {
        return Err(bad(
            "invalid_method",
            format!("Line {line_no}: `method` must be POST."),
        ));
    }
    let url = string("url")?;
    if !ENDPOINTS.contains(&url.as_str()) {
        return Err(bad(
            "invalid_url",
            format!(
                "Line {line_no}: `url` must be one of {}.",
                ENDPOINTS.join(", ")
            ),
        ));
    }
    let body = fields
        .get("body")
        .filter(|b| b.get().trim_start().starts_with('{'))
        .ok_or_else(|| {
            bad(
                "missing_required_parameter",
                format!("Line {line_no} has no `body` object."),
            )
        })?;
    Ok((custom_id, url, body.get().to_string()))
}

/// `{...}` → `{"model":"<model>",...}`: the client's other bytes untouched. Only called on a
/// parsed object with at least one key (`messages` or `prompt`), so the comma is right.
fn splice_model(text: &str, model: &str) -> String {
    let trimmed = text.trim();
    let rest = trimmed.strip_prefix('{').unwrap_or(trimmed);
    let name = serde_json::to_string(model).unwrap_or_default();
    format!("{{\"model\":{name},{rest}")
}

/// Reads the next line (without its newline) into `buf`; `Ok(false)` at the end. A line
/// longer than `max` is consumed and reported as `Err(too_long)` without being held.
pub async fn next_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: u64,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let read = (&mut *reader).take(max + 1).read_until(b'\n', buf).await?;
    if read == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Some(true));
    }
    if (buf.len() as u64) <= max {
        // The last line, without a newline.
        return Ok(Some(true));
    }
    // Too long: skip to the end of the line without keeping it.
    loop {
        buf.clear();
        let n = (&mut *reader)
            .take(64 * 1024)
            .read_until(b'\n', buf)
            .await?;
        if n == 0 || buf.last() == Some(&b'\n') {
            buf.clear();
            return Ok(Some(false));
        }
    }
}

#[cfg(test)]
mod tests;
