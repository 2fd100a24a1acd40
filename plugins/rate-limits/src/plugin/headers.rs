//! OpenAI's rate-limit headers on an admitted request's response.

use gateway_plugin_api::Headers;
use http::HeaderName;

use super::admission::Admission;
use crate::gcra::WINDOW;

// OpenAI's rate-limit headers. Built at compile time: `HeaderName::from_static` called at
// run time parses its argument on every call.
const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

/// OpenAI's reset format: "20ms", "1.5s", "6m0s". Built by hand: it goes out twice a
/// request, and `format!` costs ~1k instructions a call. Numbers go through `itoa`, not
/// `to_string` (the formatting machinery; −170 instructions a request, callgrind).
pub fn format_reset(secs: f64) -> String {
    let secs = if secs.is_nan() {
        0.0
    } else {
        secs.clamp(0.0, WINDOW)
    };
    let mut digits = itoa::Buffer::new();
    let mut text = String::with_capacity(8);
    if secs < 1.0 {
        text.push_str(digits.format((secs * 1000.0).ceil() as u64));
        text.push_str("ms");
    } else if secs < 60.0 {
        let tenths = (secs * 10.0).round() as u64;
        text.push_str(digits.format(tenths / 10));
        if tenths % 10 != 0 {
            text.push('.');
            text.push(char::from(b'0' + (tenths % 10) as u8));
        }
        text.push('s');
    } else {
        text.push_str(digits.format((secs / 60.0).floor() as u64));
        text.push('m');
        text.push_str(digits.format((secs % 60.0).round() as u64));
        text.push('s');
    }
    text
}

/// Sets the headers for the tightest request and token budgets of `admission`.
pub fn report(admission: &Admission, headers: &mut dyn Headers) {
    let mut set = |name: &HeaderName, value: http::HeaderValue| {
        headers.insert(name.clone(), value);
    };
    let reset_value = |secs: f64| {
        http::HeaderValue::try_from(format_reset(secs))
            .unwrap_or(http::HeaderValue::from_static("0s"))
    };
    if let Some(a) = admission.requests {
        set(&LIMIT_REQUESTS, a.limit.into());
        set(&REMAINING_REQUESTS, a.remaining.into());
        set(&RESET_REQUESTS, reset_value(a.reset));
    }
    if let Some(a) = admission.tokens {
        set(&LIMIT_TOKENS, a.limit.into());
        set(&REMAINING_TOKENS, a.remaining.into());
        set(&RESET_TOKENS, reset_value(a.reset));
    }
}
