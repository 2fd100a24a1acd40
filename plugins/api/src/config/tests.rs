use std::time::Duration;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Plugin {
    timeout: Option<TextDuration>,
    #[serde(default)]
    per_user: Limits,
    #[serde(default)]
    keys: Vec<Key>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Limits {
    tokens_per_minute: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Key {
    username: String,
}

fn read(text: &str) -> Result<Plugin, PluginConfigError> {
    from_table(&text.parse().expect("toml"), "plugins[2]")
}

fn error(text: &str) -> String {
    read(text).expect_err("refused").to_string()
}

/// Asserts that `text` is refused with an error that starts with `prefix`.
fn refused_with(text: &str, prefix: &str) {
    let err = error(text);
    assert!(err.starts_with(prefix), "{err}");
}

#[test]
fn kind_is_ignored_and_durations_are_text() {
    let p = read("kind = \"mine\"\ntimeout = \"250ms\"\n[per_user]\ntokens_per_minute = 5")
        .expect("accepted");
    assert_eq!(p.timeout, Some(TextDuration(Duration::from_millis(250))));
    assert_eq!(p.per_user.tokens_per_minute, Some(5));
    assert_eq!(
        read("timeout = \" 1m30s \"").expect("accepted").timeout,
        Some(TextDuration(Duration::from_secs(90)))
    );
    let p = read("kind = \"mine\"\n[[keys]]\nusername = \"a\"").expect("accepted");
    assert!(p.timeout.is_none());
    assert_eq!(p.keys.first().map(|k| k.username.as_str()), Some("a"));
}

#[test]
fn unknown_keys_are_named_with_their_path() {
    let err = read("kind = \"mine\"\nfile = \"x\"").expect_err("refused");
    assert_eq!(err.path, "plugins[2].file");
    assert!(
        err.message
            .starts_with("unknown key for plugin `mine` (unknown field `file`, expected one of"),
        "{err}"
    );
    let err = error("[per_user]\nrpm = 5");
    assert_eq!(
        err,
        "plugins[2].per_user.rpm: unknown key (unknown field `rpm`, expected `tokens_per_minute`)"
    );
}

#[test]
fn nested_values_are_named_with_their_path() {
    refused_with(
        "[per_user]\ntokens_per_minute = -5",
        "plugins[2].per_user.tokens_per_minute: invalid value: integer `-5`",
    );
    refused_with(
        "[[keys]]\nusername = \"a\"\n[[keys]]\nusername = 7",
        "plugins[2].keys[1].username: invalid type",
    );
}

#[test]
fn missing_keys_are_named_with_their_own_path() {
    assert_eq!(error("[[keys]]\n"), "plugins[2].keys[0].username: missing");
}

#[test]
fn errors_about_the_whole_table_name_the_table() {
    let table: toml::Table = "a = 1".parse().expect("toml");
    let err = from_table::<Vec<u8>>(&table, "plugins[4]").expect_err("refused");
    assert_eq!(err.path, "plugins[4]");
}

#[test]
fn bad_durations_say_what_a_duration_looks_like() {
    refused_with(
        "timeout = \"soon\"",
        "plugins[2].timeout: `soon` is not a duration like \"60s\" or \"250ms\"",
    );
    refused_with(
        "timeout = 5",
        "plugins[2].timeout: invalid type: integer `5`",
    );
}

#[test]
fn errors_become_the_text_factories_answer_with() {
    let text: String = read("file = 1").expect_err("refused").into();
    assert!(text.starts_with("plugins[2].file: "), "{text}");
}
