//! TLS on the client listeners (rustls, through Pingora): TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1
//! by ALPN, and a certificate that SIGHUP reloads from its files without a restart (new
//! handshakes get the new one; connections already open keep theirs).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora_core::listeners::tls::TlsSettings;
use pingora_rustls::sign::CertifiedKey;
use pingora_rustls::{ClientHello, CryptoProvider, ResolvesServerCert};

/// The certificate chain and key the listeners present, read from PEM files.
pub struct ReloadableCert {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReloadableCert({})", self.cert.display())
    }
}

/// Reads a chain and its key, checking that they belong together.
pub fn read_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    pingora_rustls::install_default_crypto_provider();
    let (cert_text, key_text) = (cert.display().to_string(), key.display().to_string());
    let (chain, private) = pingora_rustls::load_certs_and_key_files(&cert_text, &key_text)
        .map_err(|e| format!("cannot read `{cert_text}` or `{key_text}`: {e}"))?
        .ok_or_else(|| {
            format!("`{cert_text}` holds no PEM certificate, or `{key_text}` no PEM private key")
        })?;
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| "no TLS crypto provider is installed".to_string())?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| format!("`{key_text}` is not a usable private key: {e}"))?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().map_err(|e| {
        format!("the key in `{key_text}` does not match the certificate in `{cert_text}`: {e}")
    })?;
    Ok(pair)
}

impl ReloadableCert {
    pub fn load(cert: &Path, key: &Path) -> Result<ReloadableCert, String> {
        Ok(ReloadableCert {
            current: ArcSwap::from_pointee(read_pair(cert, key)?),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        })
    }

    /// Reads the files again; on any error the certificate in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let pair = read_pair(&self.cert, &self.key)?;
        self.current.store(Arc::new(pair));
        Ok(())
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Listener settings presenting `cert`: modern protocol versions (Pingora's rustls acceptor
/// allows TLS 1.2 and 1.3 only), HTTP/2 offered first by ALPN.
pub fn listener_settings(cert: &Arc<ReloadableCert>) -> Result<TlsSettings, String> {
    let paths = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    );
    let mut settings = TlsSettings::intermediate(&paths.0, &paths.1).map_err(|e| e.to_string())?;
    settings.set_cert_resolver(cert.clone());
    settings.enable_h2();
    Ok(settings)
}
