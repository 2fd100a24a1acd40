//! A test certificate authority and server certificates for the TLS listener, with rcgen.

use std::path::Path;

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, SanType};

pub struct Ca {
    pub cert: Certificate,
    pub key: KeyPair,
}

/// A self-signed CA named `name`.
pub fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("ca");
    Ca { cert, key }
}

/// A certificate for localhost and 127.0.0.1 signed by `ca`, written as `cert.pem` and
/// `key.pem` in `dir`; `expired` makes one whose validity ended in 2020.
pub fn server_cert(ca: &Ca, dir: &Path, expired: bool) {
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    if expired {
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    }
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.cert, &ca.key).expect("sign");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("cert");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("key");
}

/// The `[server.tls]` table (for `Gateway::start`'s `server_extra`) serving `dir`'s
/// `cert.pem` and `key.pem` on 127.0.0.1:`port`.
pub fn tls_server(dir: &Path, port: u16) -> String {
    format!(
        "\n[server.tls]\nlisten = [\"127.0.0.1:{port}\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    )
}
