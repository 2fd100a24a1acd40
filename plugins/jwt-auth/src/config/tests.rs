//! What the `jwt_auth` factory accepts and refuses; every refusal names its TOML path.

use super::*;

const JWKS: &str =
    "issuer = \"https://idp/realms/hpc\"\naudience = [\"gw\"]\njwks_url = \"https://idp/certs\"\n";

fn fixture(name: &str) -> String {
    format!(
        "{}/../../tests/fixtures/jwt/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn parse(text: &str) -> Result<JwtConfig, String> {
    let table: toml::Table = format!("kind = \"jwt_auth\"\n{text}")
        .parse()
        .expect("toml");
    JwtConfig::parse(&table, "plugins[4]")
}

/// The error for `text`, which must be refused.
fn refusal(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e,
    }
}

#[test]
fn a_jwks_issuer_gets_the_defaults() {
    let cfg = parse(JWKS).expect("accepted");
    assert_eq!(cfg.issuer, "https://idp/realms/hpc");
    assert_eq!(cfg.audience, ["gw"]);
    assert_eq!(cfg.algorithms, [Algorithm::RS256]);
    assert!(matches!(
        cfg.keys,
        KeySource::Jwks { ref url, min_refresh } if url == "https://idp/certs" && min_refresh == Duration::from_secs(60)
    ));
    assert_eq!(
        (
            cfg.username_claim.as_str(),
            cfg.groups_claim.as_str(),
            cfg.id_claim.as_str()
        ),
        ("preferred_username", "groups", "sub")
    );
    assert_eq!(cfg.identity_provider, cfg.issuer);
    assert_eq!(cfg.leeway, Duration::from_secs(30));
    assert_eq!(cfg.timeout, Duration::from_secs(5));
}

#[test]
fn every_setting_can_be_given() {
    let cfg = parse(&format!(
        "{JWKS}algorithms = [\"ES256\", \"EdDSA\"]\njwks_min_refresh_interval = \"5m\"\n\
         username_claim = \"email\"\ngroups_claim = \"roles\"\nid_claim = \"oid\"\n\
         identity_provider = \"HPC\"\nleeway = \"0s\"\ntimeout = \"1500ms\"\n"
    ))
    .expect("accepted");
    assert_eq!(cfg.algorithms, [Algorithm::ES256, Algorithm::EdDSA]);
    assert!(
        matches!(cfg.keys, KeySource::Jwks { min_refresh, .. } if min_refresh == Duration::from_secs(300))
    );
    assert_eq!(
        (
            cfg.username_claim.as_str(),
            cfg.groups_claim.as_str(),
            cfg.id_claim.as_str()
        ),
        ("email", "roles", "oid")
    );
    assert_eq!(cfg.identity_provider, "HPC");
    assert_eq!(cfg.leeway, Duration::ZERO);
    assert_eq!(cfg.timeout, Duration::from_millis(1500));
}

#[test]
fn a_static_key_is_a_pem_public_key_file() {
    let text = format!(
        "issuer = \"https://idp\"\naudience = [\"gw\"]\nkey_file = {:?}\n",
        fixture("key1-public.pem")
    );
    assert!(matches!(
        parse(&text).expect("accepted").keys,
        KeySource::Static(_)
    ));
    let missing =
        "issuer = \"https://idp\"\naudience = [\"gw\"]\nkey_file = \"/nonexistent/key.pem\"\n";
    let err = refusal(missing);
    assert!(
        err.starts_with("plugins[4].key_file: cannot read `/nonexistent/key.pem`"),
        "{err}"
    );
    let not_pem = format!(
        "issuer = \"https://idp\"\naudience = [\"gw\"]\nkey_file = {:?}\n",
        concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")
    );
    let err = refusal(&not_pem);
    assert!(
        err.starts_with("plugins[4].key_file: `")
            && err.ends_with("is not a PEM RSA, EC or Ed25519 public key"),
        "{err}"
    );
}

#[test]
fn keys_come_from_exactly_one_source() {
    let neither = "issuer = \"https://idp\"\naudience = [\"gw\"]\n";
    assert_eq!(
        refusal(neither),
        "plugins[4]: set exactly one of jwks_url and key_file"
    );
    let both = format!("{JWKS}key_file = {:?}\n", fixture("key1-public.pem"));
    assert_eq!(
        refusal(&both),
        "plugins[4]: set exactly one of jwks_url and key_file"
    );
    let err = refusal("issuer = \"https://idp\"\naudience = [\"gw\"]\njwks_url = \"idp/certs\"\n");
    assert_eq!(
        err,
        "plugins[4].jwks_url: `idp/certs` is not an http(s) URL"
    );
}

#[test]
fn issuer_and_audience_are_required() {
    assert_eq!(
        refusal("audience = [\"gw\"]\njwks_url = \"https://idp/certs\"\n"),
        "plugins[4].issuer: missing"
    );
    assert_eq!(
        refusal("issuer = \"https://idp\"\njwks_url = \"https://idp/certs\"\n"),
        "plugins[4].audience: missing"
    );
    assert_eq!(
        refusal("issuer = \"\"\naudience = [\"gw\"]\njwks_url = \"https://idp/certs\"\n"),
        "plugins[4].issuer: must not be empty"
    );
    assert!(
        refusal("issuer = \"https://idp\"\naudience = []\njwks_url = \"https://idp/certs\"\n")
            .starts_with("plugins[4].audience: list at least one accepted audience")
    );
    assert!(refusal(
        "issuer = \"https://idp\"\naudience = \"gw\"\njwks_url = \"https://idp/certs\"\n"
    )
    .starts_with("plugins[4].audience: invalid type: string \"gw\", expected a sequence"));
}

#[test]
fn only_public_key_algorithms_are_accepted() {
    assert!(refusal(&format!("{JWKS}algorithms = []"))
        .starts_with("plugins[4].algorithms: `[]` would accept no token"));
    assert!(
        refusal(&format!("{JWKS}algorithms = [\"RS256\", \"XY999\"]"))
            .starts_with("plugins[4].algorithms[1]: `XY999` is not a JWS algorithm")
    );
    assert!(refusal(&format!("{JWKS}algorithms = [\"HS256\"]"))
        .starts_with("plugins[4].algorithms[0]: `HS256` needs a shared secret"));
}

#[test]
fn claims_durations_and_keys_are_checked() {
    assert_eq!(
        refusal(&format!("{JWKS}groups_claim = \" \"")),
        "plugins[4].groups_claim: `\"\"` names no claim"
    );
    assert!(refusal(&format!("{JWKS}leeway = \"a while\""))
        .starts_with("plugins[4].leeway: `a while` is not a duration like \"60s\" or \"250ms\""));
    assert!(refusal(&format!("{JWKS}jwks_min_refresh_interval = 60"))
        .starts_with("plugins[4].jwks_min_refresh_interval: invalid type: integer `60`"));
    assert!(refusal(&format!("{JWKS}secret = \"x\"")).starts_with(
        "plugins[4].secret: unknown key for plugin `jwt_auth` (unknown field `secret`"
    ));
}
