//! Reading a captured usage object. Without serde when it is the flat object vLLM sends
//! (`{"prompt_tokens":12,"total_tokens":28,"completion_tokens":16,"prompt_tokens_details":null}`):
//! serde_json spent ~1.6k instructions on it, 2 % of a request's with everything on
//! (callgrind). Anything else (a nested value, a string, a float, an escaped key, a number
//! too large, a key given twice, broken JSON) is left to serde: the answer is only ever
//! serde's answer, reached sooner.

use gateway_plugin_api::Usage;
use serde::Deserialize;

/// The three counts of a usage object (other fields are ignored).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(super) struct Counts {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
}

/// Reads a captured usage object; `None` unless it holds a token count (embeddings report
/// only `prompt_tokens` and `total_tokens`). The flat objects vLLM sends are read directly,
/// anything else by serde.
pub(super) fn parse_usage(object: &[u8]) -> Option<Usage> {
    let counts = match read(object) {
        Some(counts) => counts,
        None => serde_json::from_slice::<Counts>(object).ok()?,
    };
    let prompt = counts.prompt_tokens?;
    let completion = counts
        .completion_tokens
        .or_else(|| counts.total_tokens.map(|t| t.saturating_sub(prompt)))
        .unwrap_or(0);
    Some(Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        estimated: false,
    })
}

/// `Some` when `object` is a flat JSON object whose values are all unsigned integers that fit
/// a `u64`, or `null`, whose keys are plain ASCII (no escapes), and that names each of the
/// three counts at most once; `None` means "ask serde".
fn read(object: &[u8]) -> Option<Counts> {
    let mut counts = Counts::default();
    let mut seen = [false; 3];
    let mut at = skip_space(object, 0);
    if object.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_space(object, at + 1);
    if object.get(at) == Some(&b'}') {
        return finished(object, at + 1, counts);
    }
    loop {
        // A key: a plain string of printable ASCII (serde checks that other bytes are UTF-8,
        // and refuses the object when they are not: left to it).
        if object.get(at) != Some(&b'"') {
            return None;
        }
        let key_start = at + 1;
        let key_len = object
            .get(key_start..)?
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || !(0x20..0x80).contains(&b))?;
        let key = object.get(key_start..key_start + key_len)?;
        if object.get(key_start + key_len) != Some(&b'"') {
            return None;
        }
        at = skip_space(object, key_start + key_len + 1);
        if object.get(at) != Some(&b':') {
            return None;
        }
        at = skip_space(object, at + 1);
        // A value: an unsigned integer or null.
        let (value, end) = match object.get(at) {
            Some(b'n') if object.get(at..at + 4) == Some(b"null") => (None, at + 4),
            Some(b'0'..=b'9') => {
                let (n, end) = integer(object, at)?;
                (Some(n), end)
            }
            _ => return None,
        };
        let slot = match key {
            b"prompt_tokens" => Some((0, &mut counts.prompt_tokens)),
            b"completion_tokens" => Some((1, &mut counts.completion_tokens)),
            b"total_tokens" => Some((2, &mut counts.total_tokens)),
            _ => None,
        };
        if let Some((index, field)) = slot {
            // serde refuses a field given twice.
            if std::mem::replace(seen.get_mut(index)?, true) {
                return None;
            }
            *field = value;
        }
        at = skip_space(object, end);
        match object.get(at) {
            Some(b',') => at = skip_space(object, at + 1),
            Some(b'}') => return finished(object, at + 1, counts),
            _ => return None,
        }
    }
}

/// JSON's whitespace from `at` on.
fn skip_space(text: &[u8], mut at: usize) -> usize {
    while matches!(text.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// An unsigned JSON integer at `at` (`0`, or digits not starting with `0`) that fits a
/// `u64` and is not followed by a fraction or an exponent, and where it ends.
fn integer(text: &[u8], at: usize) -> Option<(u64, usize)> {
    let digits = text
        .get(at..)?
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let end = at + digits;
    if digits > 1 && text.get(at) == Some(&b'0') {
        return None;
    }
    if matches!(text.get(end), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    let mut n: u64 = 0;
    for &b in text.get(at..end)? {
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some((n, end))
}

/// The object closed before `at`: only whitespace may follow.
fn finished(text: &[u8], at: usize, counts: Counts) -> Option<Counts> {
    (skip_space(text, at) == text.len()).then_some(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What serde reads (the slow path), for comparison.
    fn serde_counts(object: &[u8]) -> Option<Counts> {
        serde_json::from_slice(object).ok()
    }

    #[test]
    fn vllm_and_openai_shapes() {
        let vllm = br#"{"prompt_tokens":12,"total_tokens":28,"completion_tokens":16,"prompt_tokens_details":null}"#;
        let counts = read(vllm).expect("flat");
        assert_eq!(counts.prompt_tokens, Some(12));
        assert_eq!(counts.completion_tokens, Some(16));
        assert_eq!(counts.total_tokens, Some(28));
        assert_eq!(Some(counts), serde_counts(vllm));
        // Nested details are serde's to read.
        let openai = br#"{"prompt_tokens":1,"prompt_tokens_details":{"cached_tokens":0}}"#;
        assert_eq!(read(openai), None);
        assert_eq!(read(b" { } \n"), Some(Counts::default()));
    }

    #[test]
    fn whatever_serde_would_refuse_or_read_otherwise_is_left_to_it() {
        for text in [
            &br#"{"prompt_tokens":1,"prompt_tokens":2}"#[..],
            br#"{"prompt_tokens":18446744073709551616}"#,
            br#"{"prompt_tokens":012}"#,
            br#"{"prompt_tokens":1.0}"#,
            br#"{"prompt_tokens":1e3}"#,
            br#"{"prompt_tokens":-1}"#,
            br#"{"prompt_tokens":"1"}"#,
            br#"{"prompt\u005ftokens":1}"#,
            br#"{"prompt_tokens":1,}"#,
            br#"{"prompt_tokens":1} x"#,
            br#"{"prompt_tokens":nul}"#,
            br#"{"prompt_tokens" 1}"#,
            br#"{prompt_tokens:1}"#,
            br#"[1]"#,
            br#"{"prompt_tokens":1"#,
            b"{\"prompt_tokens\":1,\"\xff\":2}",
            "{\"pré\":2}".as_bytes(),
            b"",
        ] {
            assert_eq!(read(text), None, "{}", String::from_utf8_lossy(text));
        }
        assert_eq!(
            read(br#"{"prompt_tokens":18446744073709551615}"#).and_then(|c| c.prompt_tokens),
            Some(u64::MAX)
        );
    }

    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("{".to_string()),
            Just("}".to_string()),
            Just(",".to_string()),
            Just(":".to_string()),
            Just(" ".to_string()),
            Just("\n".to_string()),
            Just("null".to_string()),
            Just("nul".to_string()),
            Just("\"prompt_tokens\"".to_string()),
            Just("\"completion_tokens\"".to_string()),
            Just("\"total_tokens\"".to_string()),
            Just("\"other\"".to_string()),
            Just("\"a\\\"b\"".to_string()),
            Just("[1]".to_string()),
            Just("1.5".to_string()),
            Just("-3".to_string()),
            Just("true".to_string()),
            Just("18446744073709551616".to_string()),
            Just("00".to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            (0u64..100).prop_map(|n| n.to_string()),
        ]
    }

    fn key() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "\"prompt_tokens\"",
            "\"completion_tokens\"",
            "\"total_tokens\"",
            "\"prompt_tokens_details\"",
            "\"\"",
            "\"total\\u005ftokens\"",
            "prompt_tokens",
        ])
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => any::<u64>().prop_map(|n| n.to_string()),
            4 => (0u64..1000).prop_map(|n| n.to_string()),
            3 => Just("null".to_string()),
            1 => prop::sample::select(vec![
                "18446744073709551616", "00", "01", "1.5", "2e3", "-3", "true", "\"7\"",
                "[1]", "{}", "{\"cached_tokens\":0}", "nul",
            ])
            .prop_map(str::to_string),
        ]
    }

    fn space() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["", "", "", " ", "\n\t", "\r "])
    }

    /// Objects of the three keys, other keys and every kind of value, mostly well formed.
    fn object() -> impl Strategy<Value = String> {
        let member = (space(), key(), space(), value(), space())
            .prop_map(|(a, k, b, v, c)| format!("{a}{k}{b}:{a}{v}{c}"));
        (prop::collection::vec(member, 0..6), space(), space()).prop_map(
            |(members, before, after)| format!("{before}{{{}}}{after}", members.join(",")),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn whenever_it_answers_it_answers_as_serde(text in object()) {
            if let Some(counts) = read(text.as_bytes()) {
                prop_assert_eq!(Some(counts), serde_counts(text.as_bytes()), "{}", text);
            }
        }

        #[test]
        fn arbitrary_tokens_never_disagree_with_serde(tokens in prop::collection::vec(token(), 0..14)) {
            let text = tokens.concat();
            if let Some(counts) = read(text.as_bytes()) {
                prop_assert_eq!(Some(counts), serde_counts(text.as_bytes()), "{}", text);
            }
        }
    }
}
