use super::*;

const STREAM: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n\
    data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}],\"usage\":null}\n\n\
    data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
    data: {\"choices\":[],\"usage\": {\"prompt_tokens\": 12, \"completion_tokens\": 2, \"total_tokens\": 14}}\n\n\
    data: [DONE]\n\n";

fn observe_in_pieces(content_type: &[u8], text: &[u8], piece: usize) -> Option<Usage> {
    let mut o = UsageObserver::new(Some(content_type));
    for chunk in text.chunks(piece) {
        o.observe(chunk);
    }
    o.finish(0)
}

fn reported(prompt: u64, completion: u64) -> Option<Usage> {
    Some(Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        estimated: false,
    })
}

#[test]
fn sse_usage_is_found_however_the_stream_is_split() {
    for piece in [1, 2, 3, 7, 16, 64, STREAM.len()] {
        assert_eq!(
            observe_in_pieces(b"text/event-stream", STREAM.as_bytes(), piece),
            reported(12, 2),
            "pieces of {piece}"
        );
    }
}

#[test]
fn streams_without_usage_are_estimated() {
    let no_usage = STREAM.replace("\"usage\": {", "\"other\": {");
    let mut o = UsageObserver::new(Some(b"text/event-stream"));
    o.observe(no_usage.as_bytes());
    let u = o.finish(400).expect("estimate");
    assert!(u.estimated);
    assert_eq!(u.prompt_tokens, 100);
    // Four data events (not [DONE]), less the closing one.
    assert_eq!(u.completion_tokens, 3);
}

#[test]
fn a_usage_inside_a_stream_event_but_not_at_its_top_level_is_not_usage() {
    let nested = "data: {\"choices\":[{\"delta\":{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}}]}\n\n";
    let u = observe_in_pieces(b"text/event-stream", nested.as_bytes(), 5).expect("estimate");
    assert!(u.estimated, "{u:?}");
}

/// vLLM's order: usage, then the prompt's logprobs and token ids (here 20 KiB of them).
fn vllm_body_with_prompt_logprobs() -> String {
    let logprobs: Vec<String> = (0..400)
        .map(|i| format!("{{\"{i}\":{{\"logprob\":-1.5,\"rank\":1,\"decoded_token\":\"t\\\"usage\\\":{{\"}}}}"))
        .collect();
    format!(
        "{{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"say \\\"usage\\\": {{\\\"prompt_tokens\\\": 1}}\"}}}}],\
         \"usage\":{{\"prompt_tokens\":412,\"total_tokens\":419,\"completion_tokens\":7,\"prompt_tokens_details\":null}},\
         \"prompt_logprobs\":[null,{}],\"prompt_token_ids\":[1,2,3],\"kv_transfer_params\":null}}",
        logprobs.join(",")
    )
}

#[test]
fn json_usage_is_found_wherever_it_is_and_however_the_body_is_split() {
    let body = vllm_body_with_prompt_logprobs();
    assert!(body.len() > 16 << 10);
    for piece in [1, 2, 3, 5, 64, 1000, body.len()] {
        assert_eq!(
            observe_in_pieces(b"application/json", body.as_bytes(), piece),
            reported(412, 7),
            "pieces of {piece}"
        );
    }
}

#[test]
fn json_usage_at_the_end_still_works() {
    let body = format!(
        "{{\"choices\":[{{\"message\":{{\"content\":\"{}\"}}}}],\"usage\":{{\"prompt_tokens\":5,\"completion_tokens\":7}}}}",
        "x".repeat(20_000)
    );
    assert_eq!(
        observe_in_pieces(b"application/json; charset=utf-8", body.as_bytes(), 1000),
        reported(5, 7)
    );
}

#[test]
fn embeddings_usage_counts_prompt_tokens() {
    let body = br#"{"object":"list","data":[],"usage":{"prompt_tokens":9,"total_tokens":9}}"#;
    assert_eq!(
        observe_in_pieces(b"application/json", body, 4),
        reported(9, 0)
    );
}

#[test]
fn no_top_level_usage_means_none() {
    for body in [
        &br#"{"choices":[{"usage":{"prompt_tokens":3,"completion_tokens":4}}]}"#[..],
        br#"{"text":"\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}"}"#,
        br#"{"usage":null}"#,
        br#"{"usage":{"completion_tokens":4}}"#,
        br#"{"usage":{"prompt_tokens":-3,"completion_tokens":4}}"#,
        br#"[{"usage":{"prompt_tokens":3}}]"#,
        br#"{"usage":{"prompt_tokens":3"#,
        b"",
    ] {
        assert_eq!(
            observe_in_pieces(b"application/json", body, 3),
            None,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn an_oversized_usage_object_is_not_read() {
    let body = format!(
        "{{\"usage\":{{\"prompt_tokens\":3,\"completion_tokens\":4,\"pad\":\"{}\"}}}}",
        "p".repeat(MAX_USAGE_OBJECT)
    );
    assert_eq!(
        observe_in_pieces(b"application/json", body.as_bytes(), 100),
        None
    );
}

#[test]
fn other_bodies_report_nothing() {
    let mut o = UsageObserver::new(Some(b"text/plain"));
    o.observe(b"\"usage\":{\"prompt_tokens\":1}");
    assert_eq!(o.finish(10), None);
}

/// Strings of every length around the word-at-a-time search's steps (8 bytes, 32 bytes),
/// with escapes at their edges, and keys that almost read `usage`: fed whole, split once
/// at every byte, and in pieces of 1 to 9 bytes, the scan finds exactly the top-level usage.
#[test]
fn strings_of_every_length_and_escape_are_jumped_over_at_any_split() {
    let mut fields = Vec::new();
    for len in [0, 1, 6, 7, 8, 9, 15, 16, 17, 31, 32, 33, 40, 70] {
        let plain = "u".repeat(len);
        fields.push(format!("\"k{len}\":\"{plain}\""));
        fields.push(format!("\"e{len}\":\"{plain}\\\"usage\\\":{{\\\\\""));
        fields.push(format!(
            "\"n{len}\":{{\"usage\":{{\"prompt_tokens\":{len}}},\"{plain}\":[\"\\\\\"]}}"
        ));
    }
    let decoys = r#""usag":{"prompt_tokens":1},"usages":{"prompt_tokens":2},"us\u0061ge":{"prompt_tokens":3},"#;
    let body = format!(
        "{{{decoys}{},\"usage\":{{\"prompt_tokens\":41,\"note\":\"x\\\"}}\",\"completion_tokens\":5}},\"tail\":\"{}\"}}",
        fields.join(","),
        "t".repeat(33)
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body)
            .map(|v| v["usage"]["prompt_tokens"].clone())
            .ok(),
        Some(serde_json::json!(41)),
        "the test body is valid JSON"
    );
    let want = reported(41, 5);
    for piece in 1..=9 {
        assert_eq!(
            observe_in_pieces(b"application/json", body.as_bytes(), piece),
            want,
            "pieces of {piece}"
        );
    }
    for at in 0..=body.len() {
        let (first, second) = body.as_bytes().split_at(at);
        let mut o = UsageObserver::new(Some(b"application/json"));
        o.observe(first);
        o.observe(second);
        assert_eq!(o.finish(0), want, "split at {at}");
    }
}
