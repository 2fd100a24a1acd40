//! The `check` and `run` commands as an operator uses them.

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

use std::process::Command;

fn gateway(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_inference-gateway"))
        .args(args)
        // conf/facility.toml reads the Globus client secret from the environment.
        .env("GLOBUS_CLIENT_SECRET", "example-only")
        .output()
        .expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_shipped_config_passes_check() {
    let mut checked = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/conf")).expect("conf/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (ok, text) = gateway(&["check", "--config", path.to_str().expect("utf8")]);
            assert!(ok, "{}: {text}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 1);
}

#[test]
fn check_and_run_refuse_a_bad_file_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[[pools]]\nname = \"p\"\ncluster = \"c\"\nframework = \"f\"\nmodels = [\"m\"]\nbackends = [\"127.0.0.1:80x\"]\n",
    )
    .expect("write");
    let file = file.to_str().expect("utf8");
    for command in ["check", "run"] {
        let (ok, text) = gateway(&[command, "--config", file]);
        assert!(!ok, "{command} must fail");
        assert!(
            text.contains("pools[0].backends[0]: `127.0.0.1:80x` is not a host:port"),
            "{command}: {text}"
        );
    }
    let (ok, text) = gateway(&["check", "--config", "/nonexistent/gateway.toml"]);
    assert!(!ok);
    assert!(
        text.contains("cannot read /nonexistent/gateway.toml"),
        "{text}"
    );
}

#[test]
fn unknown_plugin_kinds_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("plugins.toml");
    std::fs::write(
        &file,
        "[[plugins]]\nkind = \"telepathy\"\n[[pools]]\nname = \"p\"\ncluster = \"c\"\nframework = \"f\"\nmodels = [\"m\"]\nbackends = [\"127.0.0.1:1\"]\n",
    )
    .expect("write");
    let (ok, text) = gateway(&["check", "--config", file.to_str().expect("utf8")]);
    assert!(!ok);
    assert!(
        text.contains(
            "plugins[0].kind: `telepathy` is not a known plugin kind (known: access_log,"
        ),
        "{text}"
    );
}

#[test]
fn plugin_settings_that_cannot_work_are_config_errors_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = "[[pools]]\nname = \"p\"\ncluster = \"c\"\nframework = \"f\"\nmodels = [\"m\"]\nbackends = [\"127.0.0.1:1\"]\n";
    let cases = [
        (
            "[[plugins]]\nkind = \"jwt_auth\"\nissuer = \"https://idp\"\naudience = [\"gw\"]\njwks_url = \"https://idp/jwks\"\nalgorithms = []\n",
            "plugins[0].algorithms: `[]` would accept no token",
        ),
        (
            "[[plugins]]\nkind = \"rate_limits\"\n[plugins.per_user]\ntokens_per_minute = -5\n",
            "plugins[0]",
        ),
        (
            "[[plugins]]\nkind = \"rate_limits\"\n[plugins.per_user]\ntokens_per_minute = 9000000000000\n",
            "plugins[0].per_user.tokens_per_minute: `9000000000000` is above the largest limit",
        ),
        (
            "[server]\nmax_tokens_limit = 0\n",
            "server.max_tokens_limit: `0` must be from 1",
        ),
        (
            "[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
            "server.trusted_proxies[0]: `10.0.0.0/33` is not an address or network",
        ),
    ];
    for (i, (plugin, want)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("case{i}.toml"));
        std::fs::write(&file, format!("{plugin}{pool}")).expect("write");
        let (ok, text) = gateway(&["check", "--config", file.to_str().expect("utf8")]);
        assert!(!ok, "case {i} must fail: {text}");
        assert!(text.contains(want), "case {i}: {text}");
        assert!(!text.contains("panicked"), "case {i}: {text}");
    }
}
