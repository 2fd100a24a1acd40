//! `inference-auth-token`, the user's login tool, as a user runs it: against the mock Globus
//! Auth (authorize, code grant with PKCE, refresh grant, revocation), with `HOME` in a
//! temporary directory, and then through the gateway's `globus_auth` plugin as the usage
//! guide does (`MY_TOKEN=$(inference-auth-token get_access_token)`).

#![allow(
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "integration tests: a failed expectation is a test failure"
)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::Ordering;

use common::*;
use gateway_testkit::globus::MockGlobus;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// The native app's (public) client id and the gateway's, as a site registers them.
const NATIVE_APP: &str = "58fdd3bc-0000-4000-8000-00000000a991";
const GATEWAY: &str = "681c10cc-0000-4000-8000-00000000beef";
const SECRET: &str = "gateway-secret";

/// `inference-auth-token` is its own workspace crate; `scripts/test.sh` builds every binary
/// of the workspace before the tests, into the directory the gateway's binary is in.
fn tool() -> PathBuf {
    std::path::Path::new(env!("CARGO_BIN_EXE_inference-gateway"))
        .with_file_name("inference-auth-token")
}

/// A user with an empty home, whose site configured the tool through the environment.
struct User {
    home: tempfile::TempDir,
    auth_url: String,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl User {
    fn new(globus: &MockGlobus) -> User {
        User {
            home: tempfile::tempdir().expect("home"),
            auth_url: globus.auth_url(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(tool());
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("INFERENCE_AUTH_CLIENT_ID", NATIVE_APP)
            .env("INFERENCE_AUTH_GATEWAY_CLIENT_ID", GATEWAY)
            .env("INFERENCE_AUTH_GLOBUS_URL", &self.auth_url)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    async fn run(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().await.expect("run the tool");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn token_dir(&self) -> PathBuf {
        self.home
            .path()
            .join(".globus/app")
            .join(NATIVE_APP)
            .join("inference_app")
    }

    fn tokens(&self) -> Value {
        let text =
            std::fs::read_to_string(self.token_dir().join("tokens.json")).expect("tokens.json");
        serde_json::from_str(&text).expect("tokens.json is whole JSON")
    }

    fn stored_access_token(&self) -> String {
        self.tokens()["data"]["DEFAULT"][GATEWAY]["access_token"]
            .as_str()
            .expect("an access token for the gateway")
            .to_string()
    }

    /// `authenticate` as on a login node without a browser: read the address the tool
    /// prints, open it elsewhere (the mock logs the test user in and shows the code), paste
    /// the code. Returns the run and the address.
    async fn login(&self, args: &[&str]) -> (Run, String) {
        let mut all = vec!["authenticate", "--no-browser"];
        all.extend_from_slice(args);
        let mut child = self
            .command(&all)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn authenticate");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut seen = String::new();
        let url = loop {
            let line = tokio::time::timeout(std::time::Duration::from_secs(10), stderr.next_line())
                .await
                .expect("the tool prints the address")
                .expect("read stderr")
                .unwrap_or_else(|| panic!("no authorize address in:\n{seen}"));
            seen.push_str(&line);
            seen.push('\n');
            if let Some(url) = line
                .trim()
                .strip_prefix(&format!("{}/v2/oauth2/authorize?", self.auth_url))
            {
                break format!("{}/v2/oauth2/authorize?{url}", self.auth_url);
            }
        };
        log_in_and_paste(&url, &mut child).await;
        while let Some(line) = stderr.next_line().await.expect("read stderr") {
            seen.push_str(&line);
            seen.push('\n');
        }
        let out = child.wait_with_output().await.expect("authenticate ends");
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: seen,
        };
        (run, url)
    }
}

/// The user in a browser elsewhere: opens the authorize address (the mock logs the test user
/// in and redirects to the page that shows the code), and pastes the code into the tool.
async fn log_in_and_paste(url: &str, child: &mut tokio::process::Child) {
    let page = reqwest::get(url)
        .await
        .expect("open the address")
        .text()
        .await
        .expect("page");
    let code = page
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .expect("a code")
        .trim()
        .to_string();
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(format!("{code}\n").as_bytes())
        .await
        .expect("paste the code");
}

async fn globus() -> MockGlobus {
    let globus = MockGlobus::start(GATEWAY, SECRET)
        .await
        .expect("mock globus");
    globus.set_login_user("ada@anl.gov");
    globus
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_login_is_stored_privately_and_kept_until_forced() {
    let globus = globus().await;
    let user = User::new(&globus);
    let (run, url) = user.login(&[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    // PKCE S256 and a refresh token asked for; nothing on stdout.
    for part in [
        "code_challenge_method=S256",
        "access_type=offline",
        "response_type=code",
        &format!("client_id={NATIVE_APP}"),
    ] {
        assert!(url.contains(part), "{url}");
    }
    assert!(!url.contains("prompt=login"), "{url}");
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    // The file: private, in a private directory, in the Python SDK's layout.
    let dir = user.token_dir();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("tokens.json")), 0o600);
    let tokens = user.tokens();
    assert_eq!(tokens["format_version"], "2.0");
    let entry = &tokens["data"]["DEFAULT"][GATEWAY];
    assert_eq!(entry["resource_server"], GATEWAY);
    assert_eq!(
        entry["scope"],
        format!("https://auth.globus.org/scopes/{GATEWAY}/action_all")
    );
    assert!(entry["refresh_token"]
        .as_str()
        .is_some_and(|r| r.starts_with("Ag")));
    let first = user.stored_access_token();
    assert!(globus.is_active(&first));

    // get_access_token: the token and a newline, nothing else; a valid one is not refreshed.
    let got = user.run(&["get_access_token"]).await;
    assert_eq!(got.code, 0, "{}", got.stderr);
    assert_eq!(got.stdout, format!("{first}\n"));
    assert!(got.stderr.is_empty(), "{}", got.stderr);
    assert_eq!(globus.refreshes(), 0);

    // Without --force a valid login is kept, and the tool says so.
    let authorizations = globus.state.native.authorizations.load(Ordering::SeqCst);
    let again = user.run(&["authenticate", "--no-browser"]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stderr.contains("Already logged in"),
        "{}",
        again.stderr
    );
    assert_eq!(
        globus.state.native.authorizations.load(Ordering::SeqCst),
        authorizations
    );
    assert_eq!(user.stored_access_token(), first);

    // --force: the old tokens are revoked, a new login (asking Globus for a fresh login).
    let (forced, url) = user.login(&["--force"]).await;
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert!(url.contains("prompt=login"), "{url}");
    assert!(
        !globus.is_active(&first),
        "the old access token was revoked"
    );
    let second = user.stored_access_token();
    assert_ne!(second, first);
    assert!(globus.is_active(&second));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expiring_token_is_refreshed_and_concurrent_calls_keep_the_file_whole() {
    let globus = globus().await;
    // Tokens that live a minute are always within the refresh margin.
    globus.set_access_token_lifetime(60);
    let user = User::new(&globus);
    assert_eq!(user.login(&[]).await.0.code, 0);
    let first = user.stored_access_token();

    let runs =
        futures_util::future::join_all((0..8).map(|_| user.run(&["get_access_token"]))).await;
    let mut printed = Vec::new();
    for run in &runs {
        assert_eq!(run.code, 0, "{}", run.stderr);
        let token = run.stdout.trim_end().to_string();
        assert_eq!(run.stdout, format!("{token}\n"));
        assert!(globus.is_active(&token), "a token Globus issued");
        printed.push(token);
    }
    assert!(
        !printed.contains(&first),
        "each call refreshed the expiring token"
    );
    assert_eq!(
        globus.refreshes(),
        8,
        "one refresh per call, one at a time (the lock)"
    );
    // The file is whole and holds the last refreshed token; no temporary file is left.
    assert!(printed.contains(&user.stored_access_token()));
    let leftovers: Vec<_> = std::fs::read_dir(user.token_dir())
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(mode(&user.token_dir().join("tokens.json")), 0o600);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_or_missing_login_says_what_to_run() {
    let globus = globus().await;
    let user = User::new(&globus);
    let none = user.run(&["get_access_token"]).await;
    assert_eq!(none.code, 3, "{}", none.stderr);
    assert!(none.stdout.is_empty());
    assert!(
        none.stderr.contains("inference-auth-token authenticate"),
        "{}",
        none.stderr
    );

    globus.set_access_token_lifetime(60);
    assert_eq!(user.login(&[]).await.0.code, 0);
    // The user revokes the app's consent at Globus: the refresh token stops working.
    let refresh = user.tokens()["data"]["DEFAULT"][GATEWAY]["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_string();
    let revoked = reqwest::Client::new()
        .post(format!("{}/v2/oauth2/token/revoke", globus.auth_url()))
        .form(&[("token", refresh.as_str()), ("client_id", NATIVE_APP)])
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoked.status(), 200);
    let after = user.run(&["get_access_token"]).await;
    assert_eq!(after.code, 3, "{}", after.stderr);
    assert!(
        after.stdout.is_empty(),
        "no token on stdout: {}",
        after.stdout
    );
    assert!(after.stderr.contains("invalid_grant"), "{}", after.stderr);
    assert!(
        after.stderr.contains("authenticate --force"),
        "{}",
        after.stderr
    );

    // `authenticate` without --force notices the dead login and logs in again.
    let (again, _) = user.login(&[]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stderr.contains("Logging in again"),
        "{}",
        again.stderr
    );
    assert_eq!(user.run(&["get_access_token"]).await.code, 0);

    // While Globus is down, a token that still works is used (with a warning); none is made up.
    globus.set_access_token_lifetime(172_800);
    assert_eq!(user.login(&["--force"]).await.0.code, 0);
    globus.set_outage(true);
    let during = user.run(&["get_access_token"]).await;
    assert_eq!(
        during.code, 0,
        "a 48-hour token needs no refresh: {}",
        during.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_revokes_and_deletes_and_a_wrong_code_is_refused() {
    let globus = globus().await;
    let user = User::new(&globus);
    // A code that Globus never issued.
    let mut child = user
        .command(&["authenticate", "--no-browser"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"NotACodeGlobusIssued\n")
        .await
        .expect("paste");
    drop(stdin);
    let out = child.wait_with_output().await.expect("ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("invalid_grant"), "{stderr}");
    assert!(!user.token_dir().join("tokens.json").exists());

    assert_eq!(user.login(&[]).await.0.code, 0);
    let token = user.stored_access_token();
    let out = user.run(&["logout"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!user.token_dir().join("tokens.json").exists());
    assert!(!globus.is_active(&token), "revoked at Globus");
    assert_eq!(user.run(&["get_access_token"]).await.code, 3);
    let twice = user.run(&["logout"]).await;
    assert_eq!(twice.code, 0);
    assert!(twice.stderr.contains("Not logged in"), "{}", twice.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_usage_guides_flow_through_the_gateway() {
    let globus = globus().await;
    let secret_file = tempfile::NamedTempFile::new().expect("secret file");
    std::fs::write(secret_file.path(), SECRET).expect("write secret");
    let plugins = format!(
        "[[plugins]]\nkind = \"globus_auth\"\nclient_id = \"{GATEWAY}\"\nclient_secret_file = \"{}\"\n{}",
        secret_file.path().display(),
        globus.plugin_urls()
    );
    let (gw, _mock) = open_and_secret_pools("", &plugins, "local", "no-such-group").await;
    let user = User::new(&globus);
    assert_eq!(user.login(&[]).await.0.code, 0);

    // export MY_TOKEN=$(inference-auth-token get_access_token), then a chat with it.
    let script = format!(
        "export MY_TOKEN=$({} get_access_token) && printf '%s' \"$MY_TOKEN\"",
        tool().display()
    );
    let shell = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .env_clear()
        .env("HOME", user.home.path())
        .env("INFERENCE_AUTH_CLIENT_ID", NATIVE_APP)
        .env("INFERENCE_AUTH_GATEWAY_CLIENT_ID", GATEWAY)
        .env("INFERENCE_AUTH_GLOBUS_URL", globus.auth_url())
        .output()
        .await
        .expect("sh");
    assert!(
        shell.status.success(),
        "{}",
        String::from_utf8_lossy(&shell.stderr)
    );
    let my_token = String::from_utf8(shell.stdout).expect("utf-8");
    let resp = post_json_with(
        &gw.api("/v1/chat/completions"),
        &chat_body(false),
        &[("authorization", &bearer(&my_token))],
    )
    .await;
    assert_eq!(resp.status(), 200);

    // whoami asks the gateway who the token is.
    let who = user.run(&["whoami", "--gateway-url", &gw.api("")]).await;
    assert_eq!(who.code, 0, "{}", who.stderr);
    let who: Value = serde_json::from_str(&who.stdout).expect("JSON");
    assert_eq!(who["username"], "ada@anl.gov");
    assert_eq!(who["auth_method"], "globus");

    // A model the user may not use: the gateway's refusal, as the user sees it.
    let body =
        serde_json::json!({"model": SECRET_MODEL, "messages": [{"role": "user", "content": "hi"}]});
    let refused = post_json_with(
        &gw.api("/v1/chat/completions"),
        &body,
        &[("authorization", &bearer(&my_token))],
    )
    .await;
    assert_eq!(refused.status(), 403);
    // After logout, whoami says what to run.
    assert_eq!(user.run(&["logout"]).await.code, 0);
    let who = user.run(&["whoami", "--gateway-url", &gw.api("")]).await;
    assert_eq!(who.code, 3, "{}", who.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_settings_are_refused_before_any_request() {
    let globus = globus().await;
    let user = User::new(&globus);
    let cases: [(&[&str], &str); 5] = [
        (&["get_access_token", "--client-id", "../../etc"], "client_id `../../etc` (from --client-id / INFERENCE_AUTH_CLIENT_ID) is not a Globus client id"),
        (&["get_access_token", "--auth-url", "http://auth.example.org"], "must be https"),
        (&["get_access_token", "--app-name", "a/b"], "app_name `a/b`"),
        (&["get_access_token", "--scope", "openid"], "scope `openid`"),
        (&["whoami"], "whoami needs the gateway's address"),
    ];
    for (args, expected) in cases {
        let run = user.run(args).await;
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(expected), "{args:?}: {}", run.stderr);
    }
    // A config file: unknown keys named with the file; values shown with where they came from.
    let config = user
        .home
        .path()
        .join(".config/inference-auth-token/config.toml");
    std::fs::create_dir_all(config.parent().expect("parent")).expect("mkdir");
    std::fs::write(
        &config,
        "gateway_url = \"https://gw.example.org/resource_server\"\nclient_idd = \"x\"\n",
    )
    .expect("write");
    let run = user.run(&["config"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("config.toml") && run.stderr.contains("client_idd"),
        "{}",
        run.stderr
    );
    std::fs::write(
        &config,
        "gateway_url = \"https://gw.example.org/resource_server\"\n",
    )
    .expect("write");
    let run = user.run(&["config"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("gateway_url = \"https://gw.example.org/resource_server\"    # from"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("client_id = \"58fdd3bc-0000-4000-8000-00000000a991\"    # from --client-id / INFERENCE_AUTH_CLIENT_ID"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("app_name = \"inference_app\"    # from built-in default"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_is_opened_where_there_is_one_and_not_with_no_browser() {
    let globus = globus().await;
    let user = User::new(&globus);
    let opened = user.home.path().join("opened");
    let browser = user.home.path().join("browser.sh");
    std::fs::write(
        &browser,
        format!("#!/bin/sh\necho \"$1\" > {}\n", opened.display()),
    )
    .expect("write");
    std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    // --no-browser: the address is printed, no browser is started.
    let (run, _) = user.login(&[]).await;
    assert_eq!(run.code, 0);
    assert!(!opened.exists());

    // With $BROWSER: it gets the address; the user logs in there and pastes the code.
    let mut child = user
        .command(&["authenticate", "--force"])
        .env("BROWSER", &browser)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    eventually(
        std::time::Duration::from_secs(10),
        "the browser was started",
        || std::fs::read_to_string(&opened).is_ok_and(|u| u.ends_with('\n')),
    )
    .await;
    let url = std::fs::read_to_string(&opened)
        .expect("opened")
        .trim()
        .to_string();
    assert!(url.contains("prompt=login"), "{url}");
    log_in_and_paste(&url, &mut child).await;
    let out = child.wait_with_output().await.expect("ends");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(globus.is_active(&user.stored_access_token()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_file_others_can_read_is_made_private() {
    let globus = globus().await;
    let user = User::new(&globus);
    assert_eq!(user.login(&[]).await.0.code, 0);
    let dir = user.token_dir();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    std::fs::set_permissions(
        dir.join("tokens.json"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod file");
    let run = user.run(&["get_access_token"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("was readable by others"),
        "{}",
        run.stderr
    );
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("tokens.json")), 0o600);
}

/// The site config the package installs documents every key, with values the tool accepts.
#[tokio::test(flavor = "multi_thread")]
async fn the_packaged_site_config_documents_every_key() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/inference-auth-token.toml"
    ))
    .expect("example");
    let keys = [
        "client_id",
        "gateway_client_id",
        "scope",
        "app_name",
        "auth_url",
        "gateway_url",
        "ca_file",
    ];
    let uncommented: String = example
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if keys.iter().any(|k| rest.starts_with(&format!("{k} = "))) => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().expect("tempdir");
    // The CA file must exist: the tool loads it before any request.
    let ca_file = dir.path().join("site-ca.pem");
    std::fs::write(&ca_file, common::certs::ca("site").cert.pem()).expect("ca");
    let uncommented =
        uncommented.replace("/etc/ssl/certs/site-ca.pem", &ca_file.display().to_string());
    let file = dir.path().join("config.toml");
    std::fs::write(&file, uncommented).expect("write");
    let out = Command::new(tool())
        .args(["config", "--config"])
        .arg(&file)
        .env_clear()
        .env("HOME", dir.path())
        .output()
        .await
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for key in keys {
        assert!(
            stdout.contains(&format!("{key} = ")) && stdout.contains(&file.display().to_string()),
            "{key}: {stdout}"
        );
    }
}

/// whoami over https trusts the site's CA only when told (`--ca-file`), and shows the
/// gateway's own refusal when the gateway turns the user away.
#[tokio::test(flavor = "multi_thread")]
async fn whoami_over_https_with_the_sites_ca_and_a_refusal_explained() {
    use common::certs::{ca, server_cert, tls_server};
    let globus = globus().await;
    let secret_file = tempfile::NamedTempFile::new().expect("secret file");
    std::fs::write(secret_file.path(), SECRET).expect("write secret");
    let certs = tempfile::tempdir().expect("certs");
    let site_ca = ca("site CA");
    server_cert(&site_ca, certs.path(), false);
    let ca_file = certs.path().join("ca.pem");
    std::fs::write(&ca_file, site_ca.cert.pem()).expect("ca file");
    let tls_port = free_port();
    // Only identities from uchicago.edu may use this gateway; the user is ada@anl.gov.
    let plugins = format!(
        "[[plugins]]\nkind = \"globus_auth\"\nclient_id = \"{GATEWAY}\"\nclient_secret_file = \"{}\"\nauthorized_idp_domains = [\"uchicago.edu\"]\n{}",
        secret_file.path().display(),
        globus.plugin_urls()
    );
    let (_gw, _mock) =
        open_and_secret_pools(&tls_server(certs.path(), tls_port), &plugins, "local", "g").await;
    let user = User::new(&globus);
    assert_eq!(user.login(&[]).await.0.code, 0);
    let base = format!("https://127.0.0.1:{tls_port}/resource_server");

    let untrusted = user.run(&["whoami", "--gateway-url", &base]).await;
    assert_eq!(untrusted.code, 1, "{}", untrusted.stderr);
    assert!(
        untrusted.stderr.contains("certificate"),
        "the cause is named: {}",
        untrusted.stderr
    );

    let ca = ca_file.display().to_string();
    let refused = user
        .run(&["whoami", "--gateway-url", &base, "--ca-file", &ca])
        .await;
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("the gateway answered 401"),
        "{}",
        refused.stderr
    );
    // The gateway's reason, and what to run, with this tool's name.
    for part in [
        "accepts identities from uchicago.edu only",
        "`inference-auth-token authenticate --force`",
    ] {
        assert!(refused.stderr.contains(part), "{part}: {}", refused.stderr);
    }
    assert!(refused.stdout.is_empty());
}
