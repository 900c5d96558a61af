//! TLS towards backends and upstream sources (`https://`, `wss://`), with rustls.
//!
//! One [`TlsConfig`] per backend or source: extra CA roots trusted besides the system's, and an
//! optional client certificate presented to the server (mutual TLS), so the gateways can sit in a
//! zero-trust network. [`client_config`] turns it into a rustls client configuration, read and
//! checked once at startup: a missing file, a PEM without certificates or key, or a certificate
//! without its key is an error naming the setting. The same configuration serves the backend
//! registry's HTTP client and the sources' connections, so both trust the same roots.
//!
//! This module does not serve TLS (the gateways are plain HTTP behind their edge), reload
//! certificates while running, check revocation lists, or pin certificates.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// TLS settings of one backend or source; used only with an `https://` or `wss://` URL.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Path of a PEM file of CA certificates trusted for this server, besides the system's roots
    /// (a private PKI). Empty: the system's roots only.
    pub ca_pem: String,
    /// Path of a PEM file with the client certificate (then its chain) presented to the server
    /// (mutual TLS). Empty: no client certificate. Needs `client_key_pem`.
    pub client_cert_pem: String,
    /// Path of the PEM private key (PKCS#8, PKCS#1 or SEC1) of `client_cert_pem`.
    pub client_key_pem: String,
}

impl TlsConfig {
    /// Whether any setting is given.
    pub fn is_set(&self) -> bool {
        !(self.ca_pem.is_empty()
            && self.client_cert_pem.is_empty()
            && self.client_key_pem.is_empty())
    }
}

/// The crypto provider every client configuration here uses (the one reqwest's `rustls` feature
/// brings), named explicitly so that nothing depends on a process-wide default.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Installs this module's crypto provider as the process default, unless one is installed.
///
/// Two rustls providers are compiled in (aws-lc-rs for reqwest, ring for other dependencies), so
/// rustls cannot pick a default by itself, and a library that asks for the default (such as
/// async-nats for a `tls://` broker) would panic. Every server binary calls this at start
/// (the server crate's `cli::run_server`); calling it again does nothing.
pub fn install_default_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: a provider is installed either way.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

/// Builds the rustls client configuration of `config`: the system's roots plus `ca_pem`, and the
/// client certificate when one is given. Errors name the setting (`tls.ca_pem`, …) and the file;
/// `alpn` lists the protocols to offer (empty: none).
pub fn client_config(
    config: &TlsConfig,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    // The system's roots; a system without any (a minimal container) still works with `ca_pem`.
    let native = rustls_native_certs::load_native_certs();
    let (_, _) = roots.add_parsable_certificates(native.certs);
    if !config.ca_pem.is_empty() {
        let certs = certificates("tls.ca_pem", &config.ca_pem)?;
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("tls.ca_pem `{}`: {e}", config.ca_pem))?;
        }
    }
    if roots.is_empty() {
        return Err("no CA roots: the system has none and tls.ca_pem is not set".to_owned());
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots);
    let mut client = match (
        config.client_cert_pem.is_empty(),
        config.client_key_pem.is_empty(),
    ) {
        (true, true) => builder.with_no_client_auth(),
        (false, false) => {
            let chain = certificates("tls.client_cert_pem", &config.client_cert_pem)?;
            let key = PrivateKeyDer::from_pem_file(Path::new(&config.client_key_pem))
                .map_err(|e| format!("tls.client_key_pem `{}`: {e}", config.client_key_pem))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!(
                    "tls.client_cert_pem `{}` with tls.client_key_pem `{}`: {e}",
                    config.client_cert_pem, config.client_key_pem
                )
            })?
        }
        (false, true) => return Err("tls.client_cert_pem is set without tls.client_key_pem".into()),
        (true, false) => return Err("tls.client_key_pem is set without tls.client_cert_pem".into()),
    };
    client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(client))
}

/// Every certificate of a PEM file; an error when there is none.
fn certificates(setting: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(Path::new(path))
        .map_err(|e| format!("{setting} `{path}`: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{setting} `{path}`: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{setting} `{path}`: no certificate in the file"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_default_provider_is_installed_once() {
        install_default_provider();
        install_default_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
        // With a default installed, the plain builder (as libraries call it) works.
        let _ = rustls::ClientConfig::builder();
    }

    #[test]
    fn half_a_client_identity_or_a_missing_file_is_a_named_error() {
        let only_cert = TlsConfig {
            client_cert_pem: "/nonexistent/cert.pem".into(),
            ..TlsConfig::default()
        };
        let e = client_config(&only_cert, &[]).unwrap_err();
        assert!(e.contains("without tls.client_key_pem"), "{e}");
        let missing = TlsConfig {
            ca_pem: "/nonexistent/ca.pem".into(),
            ..TlsConfig::default()
        };
        let e = client_config(&missing, &[]).unwrap_err();
        assert!(e.contains("tls.ca_pem `/nonexistent/ca.pem`"), "{e}");
    }
}
