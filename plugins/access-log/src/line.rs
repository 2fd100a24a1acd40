//! One access-log line: a JSON object written field by field.

use std::net::IpAddr;

use serde::Serialize;

/// One JSON object written field by field. Keys come from `key!` (literals: nothing to
/// escape); values go through serde_json, so strings are escaped exactly as serde would.
/// Under half the instructions of serializing a derived struct: the access log was 10 % of a
/// request's instructions with every feature on (benches/README.md).
pub(crate) struct JsonLine(Vec<u8>);

/// Whether JSON (as serde_json writes it) escapes any byte of `text`: quotes, backslashes,
/// control characters. Eight bytes at a time: `x - 0x01..` and `x - 0x20..`, masked with
/// `!x` and the high bits, are non-zero exactly when some byte is zero (after the xor that
/// turns a quote or backslash into zero), or below 0x20.
fn needs_escape(text: &str) -> bool {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGHS;
    let mut words = text.as_bytes().chunks_exact(8);
    for word in &mut words {
        let Ok(word) = <[u8; 8]>::try_from(word) else {
            break;
        };
        let x = u64::from_le_bytes(word);
        let quotes = x ^ u64::from_le_bytes([b'"'; 8]);
        let backslashes = x ^ u64::from_le_bytes([b'\\'; 8]);
        if below(x, 0x20) | below(quotes, 1) | below(backslashes, 1) != 0 {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

impl JsonLine {
    pub(crate) fn new() -> JsonLine {
        JsonLine(Vec::with_capacity(640))
    }

    // The writers below are inlined into the one function that writes a line, so that each
    // key (a literal of known length) is copied by a few moves instead of a call to
    // `memcpy`: 24 of its calls a request went to keys (callgrind).

    /// `key` comes from `key!`.
    #[inline(always)]
    fn key(&mut self, key: &str) {
        self.0.extend_from_slice(key.as_bytes());
    }

    #[cold]
    #[inline(never)]
    fn value(&mut self, value: impl Serialize) {
        // Writing into a Vec cannot fail, and these types always serialize.
        let _ = serde_json::to_writer(&mut self.0, &value);
    }

    #[inline(always)]
    pub(crate) fn string(&mut self, key: &str, value: Option<&str>) {
        self.key(key);
        match value {
            // Most values (ids, names, codes) need no escaping: copied as they are.
            Some(text) if !needs_escape(text) => {
                self.0.push(b'"');
                self.0.extend_from_slice(text.as_bytes());
                self.0.push(b'"');
            }
            other => self.value(other),
        }
    }

    /// Numbers by `itoa`, not serde's float and integer machinery: the line's three
    /// decimals were written by a shortest-float algorithm (~0.5 % of a request's CPU with
    /// everything on, `perf`).
    #[inline(always)]
    pub(crate) fn integer(&mut self, key: &str, value: Option<u64>) {
        self.key(key);
        match value {
            Some(n) => self
                .0
                .extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
            None => self.0.extend_from_slice(b"null"),
        }
    }

    /// `value` / 10^`PLACES`, written with `PLACES` decimal places (`12345` with 3 is
    /// `12.345`, `7` is `0.007`).
    #[inline(always)]
    pub(crate) fn decimal<const PLACES: u32>(&mut self, key: &str, value: Option<u64>) {
        self.integer(key, value.map(|v| v / 10u64.pow(PLACES)));
        if let Some(v) = value {
            let scale = 10u64.pow(PLACES);
            // The fraction plus `scale` has a leading 1 then the places, zeros kept.
            let mut digits = itoa::Buffer::new();
            let padded = digits.format(v % scale + scale).as_bytes();
            self.0.push(b'.');
            self.0
                .extend_from_slice(padded.get(1..).unwrap_or_default());
        }
    }

    #[inline(always)]
    pub(crate) fn boolean(&mut self, key: &str, value: Option<bool>) {
        self.key(key);
        self.0.extend_from_slice(match value {
            Some(true) => b"true",
            Some(false) => b"false",
            None => b"null",
        });
    }

    pub(crate) fn ip(&mut self, key: &str, ip: Option<IpAddr>) {
        self.key(key);
        match ip {
            None => self.0.extend_from_slice(b"null"),
            Some(ip) => {
                // Address text needs no JSON escaping.
                self.0.push(b'"');
                gateway_plugin_api::text::push_ip(&mut self.0, ip);
                self.0.push(b'"');
            }
        }
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        match self.0.first_mut() {
            Some(comma) => *comma = b'{',
            None => self.0.push(b'{'),
        }
        self.0.extend_from_slice(b"}\n");
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(build: impl FnOnce(&mut JsonLine)) -> serde_json::Value {
        let mut line = JsonLine::new();
        build(&mut line);
        let bytes = line.finish();
        assert_eq!(bytes.last(), Some(&b'\n'));
        serde_json::from_slice(&bytes).expect("valid JSON")
    }

    #[test]
    fn values_are_escaped_and_typed_like_serde() {
        let v = line_of(|l| {
            l.string(key!("model"), Some("a\"b\\c\n\u{1}é"));
            l.string(key!("pool"), None);
            l.decimal::<6>(key!("ts"), Some(1_795_754_953_594_000));
            l.decimal::<3>(key!("first_byte_ms"), None);
            l.integer(key!("bytes_in"), Some(u64::MAX));
            l.boolean(key!("stream"), Some(true));
            l.boolean(key!("tokens_estimated"), None);
        });
        assert_eq!(v["model"], "a\"b\\c\n\u{1}é");
        assert!(v["pool"].is_null() && v["first_byte_ms"].is_null());
        assert_eq!(v["ts"], 1795754953.594);
        assert_eq!(v["bytes_in"], u64::MAX);
        assert_eq!(v["stream"], true);
        assert!(v["tokens_estimated"].is_null());
        assert_eq!(v.as_object().map(|o| o.len()), Some(7));
    }

    #[test]
    fn decimals_keep_their_places_and_read_back_as_the_same_number() {
        let text = |micros: u64| {
            let mut line = JsonLine::new();
            line.decimal::<3>(key!("ms"), Some(micros));
            String::from_utf8_lossy(&line.finish()).into_owned()
        };
        assert_eq!(text(0), "{\"ms\":0.000}\n");
        assert_eq!(text(7), "{\"ms\":0.007}\n");
        assert_eq!(text(12_340), "{\"ms\":12.340}\n");
        assert_eq!(text(u64::MAX), "{\"ms\":18446744073709551.615}\n");
        for micros in [1, 999, 1_000, 123_456, 86_400_000_000] {
            let v: serde_json::Value = serde_json::from_str(&text(micros)).expect("json");
            assert_eq!(v["ms"].as_f64(), Some(micros as f64 / 1000.0), "{micros}");
        }
    }

    #[test]
    fn strings_are_written_byte_for_byte_as_serde_writes_them() {
        let mut texts: Vec<String> = (0u8..0x80)
            .map(|b| format!("ab{}cd", char::from(b)))
            .collect();
        texts.extend(["", "plain-id-0123", "é\u{7f}ü", "tail\\", "\"head"].map(String::from));
        for text in texts {
            let mut line = JsonLine::new();
            line.string(key!("k"), Some(&text));
            let written = line.finish();
            let want = format!(
                "{{\"k\":{}}}\n",
                serde_json::to_string(&text).expect("json")
            );
            assert_eq!(String::from_utf8_lossy(&written), want, "{text:?}");
        }
    }

    #[test]
    fn every_byte_that_needs_escaping_is_found_wherever_it_stands() {
        let plain = "0123456789abcdefghijklmnopqrstuvwxyzé".to_string();
        assert!(!needs_escape(&plain));
        for special in (0u8..0x20).chain([b'"', b'\\']) {
            for at in 0..plain.len() - 1 {
                let mut bytes = plain.clone().into_bytes();
                bytes[at] = special;
                let text = String::from_utf8_lossy(&bytes).into_owned();
                assert!(needs_escape(&text), "{special:#x} at {at}: {text:?}");
            }
        }
        for plain_byte in (0x20u8..0x80).filter(|b| *b != b'"' && *b != b'\\') {
            let text = String::from_utf8(vec![plain_byte; 19]).expect("ascii");
            assert!(!needs_escape(&text), "{plain_byte:#x}");
        }
        assert!(!needs_escape("ééééééééééé\u{7f}\u{80}\u{ff}€"));
    }

    #[test]
    fn client_addresses_print_as_display_does() {
        let cases = [
            "0.0.0.0",
            "9.10.99.100",
            "127.0.0.1",
            "255.254.200.101",
            "::1",
            "2001:db8::8a2e:370:7334",
        ];
        for text in cases {
            let ip: IpAddr = text.parse().expect("ip");
            let v = line_of(|l| l.ip(key!("client"), Some(ip)));
            assert_eq!(v["client"], ip.to_string(), "{text}");
        }
        assert!(line_of(|l| l.ip(key!("client"), None))["client"].is_null());
    }
}
