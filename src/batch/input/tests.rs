use super::*;

fn validator(endpoint: Option<&str>, model: Option<&str>) -> Validator {
    Validator::new(Rules {
        endpoint: endpoint.map(str::to_string),
        model: model.map(str::to_string),
        max_lines: 3,
        max_tokens_limit: 1000,
    })
}

#[test]
fn guide_lines_get_the_batch_model_and_a_line_id() {
    let mut v = validator(None, Some("m"));
    let line = v
        .check(
            1,
            r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}"#,
        )
        .expect("good line");
    assert_eq!(line.custom_id, "line-1");
    assert_eq!(line.url, "/v1/chat/completions");
    assert_eq!(
        line.body,
        r#"{"model":"m","messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}"#
    );
    let prompt = v.check(2, r#"{"prompt": "x"}"#);
    assert!(prompt.is_none(), "a completions line in a chat batch");
    assert_eq!(v.errors[0].code, "mismatched_endpoint");
}

#[test]
fn openai_lines_keep_their_body_bytes() {
    let mut v = validator(Some("/v1/chat/completions"), None);
    let text = r#"{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m",  "messages": []}}"#;
    let line = v.check(1, text).expect("good line");
    assert_eq!(line.body, r#"{"model": "m",  "messages": []}"#);
    assert_eq!(v.model(), Some("m"));
}

#[test]
fn each_rule_names_its_line() {
    let cases = [
        ("not json", "invalid_json"),
        (r#"{"max_tokens": 3}"#, "missing_required_parameter"),
        (
            r#"{"custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "body": {}}"#,
            "invalid_method",
        ),
        (
            r#"{"custom_id": "a", "method": "POST", "url": "/v1/other", "body": {}}"#,
            "invalid_url",
        ),
        (
            r#"{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "other", "messages": []}}"#,
            "mismatched_model",
        ),
        (r#"{"messages": [], "stream": true}"#, "invalid_body"),
        (r#"{"messages": [], "max_tokens": 100000}"#, "invalid_body"),
    ];
    for (text, code) in cases {
        let mut v = validator(None, Some("m"));
        assert!(v.check(7, text).is_none(), "{text}");
        assert_eq!(v.errors[0].code, code, "{text}");
        assert_eq!(v.errors[0].line, Some(7));
    }
}

#[test]
fn too_many_lines_are_refused_once() {
    let mut v = validator(None, Some("m"));
    for n in 1..=3 {
        assert!(v.check(n, r#"{"messages": []}"#).is_some());
    }
    assert!(v.check(4, r#"{"messages": []}"#).is_none());
    assert!(v.check(5, r#"{"messages": []}"#).is_none());
    assert_eq!(v.errors.len(), 1);
    assert_eq!(v.errors[0].code, "too_many_lines");
}

#[tokio::test]
async fn long_lines_are_skipped_without_being_held() {
    let text = format!("{}\nshort\n", "x".repeat(200_000));
    let mut reader = tokio::io::BufReader::new(text.as_bytes());
    let mut buf = Vec::new();
    assert_eq!(
        next_line(&mut reader, &mut buf, 1000).await.ok(),
        Some(Some(false))
    );
    assert_eq!(
        next_line(&mut reader, &mut buf, 1000).await.ok(),
        Some(Some(true))
    );
    assert_eq!(buf, b"short");
    assert_eq!(
        next_line(&mut reader, &mut buf, 1000).await.ok(),
        Some(None)
    );
}

proptest::proptest! {
    /// No line a user writes can panic the validator, and a line it accepts is one the
    /// routing parser reads back with the batch's model.
    #[test]
    fn any_line_is_judged_without_panicking(text in ".{0,300}", json in proptest::bool::ANY) {
        let mut v = validator(None, Some("m"));
        let line = if json { format!("{{\"messages\": [], \"x\": {text:?}}}") } else { text };
        if let Some(stored) = v.check(1, &line) {
            let fields = parse_routing_fields(stored.body.as_bytes(), 1000).expect("routable");
            proptest::prop_assert_eq!(fields.model.as_ref(), "m");
        }
    }
}
