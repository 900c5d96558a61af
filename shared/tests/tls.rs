//! TLS towards backends (`https://`) and upstream WebSocket sources (`wss://`), against real rustls
//! servers on loopback that require a client certificate (mutual TLS). The test makes its own
//! PKI with rcgen: a CA, a server certificate for `127.0.0.1`/`localhost`, a client certificate,
//! and a second CA nobody trusts. Checked: a call works with the configured CA and client
//! certificate; it fails with an error naming the backend without the client certificate, and
//! against a server whose CA is not trusted; settings that cannot work are refused at startup.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use switchyard_core::bus::memory::MemoryBus;
use switchyard_core::bus::{Bus, Delivery, StartAt};
use switchyard_core::channels::{
    Catalog, ChannelConfig, ChannelName, ChannelsConfig, SubscribeRule,
};
use switchyard_core::event::TopicClass;
use switchyard_core::sources::{Source, SourceConfig, SourceKind};
use switchyard_core::tls::TlsConfig;
use switchyard_core::upstream::{BackendConfig, RetryConfig};
use switchyard_core::upstream::{Call, Upstreams};
use test_support::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(5);

/// A CA and what it signed, as PEM files in a directory removed on drop.
struct Pki {
    dir: PathBuf,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Pki {
    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let pem = params.self_signed(&key).expect("CA").pem();
    (params, key, pem)
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("params");
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).expect("signed");
    (cert.pem(), key.serialize_pem())
}

/// Writes `ca.pem`, `server.pem`/`server.key` (for 127.0.0.1 and localhost), `client.pem`/
/// `client.key` (all from the trusted CA), and `other-ca.pem`, `other-server.pem`/
/// `other-server.key` from a CA nobody trusts.
fn pki() -> Pki {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "switchyard-tls-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).expect("write PEM");

    let (params, key, pem) = ca("switchyard test CA");
    write("ca.pem", &pem);
    let issuer = Issuer::new(params, key);
    let (cert, key) = leaf(
        &issuer,
        &["127.0.0.1", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    write("server.pem", &cert);
    write("server.key", &key);
    let (cert, key) = leaf(&issuer, &["gateway"], ExtendedKeyUsagePurpose::ClientAuth);
    write("client.pem", &cert);
    write("client.key", &key);

    let (params, key, pem) = ca("untrusted CA");
    write("other-ca.pem", &pem);
    let other = Issuer::new(params, key);
    let (cert, key) = leaf(
        &other,
        &["127.0.0.1", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    write("other-server.pem", &cert);
    write("other-server.key", &key);
    Pki { dir }
}

/// What a TLS server saw.
#[derive(Default)]
struct Seen {
    handshakes_failed: AtomicUsize,
    requests: AtomicUsize,
}

/// How the TLS server answers once the handshake is done.
#[derive(Clone, Copy)]
enum Serve {
    /// One HTTP/1.1 answer: 200 `{"ok":true}`.
    Http,
    /// A WebSocket that answers `{"op":"watch","topic":"a"}` with
    /// `{"kind":"event","topic":"a","data":{"text":"hello"}}`.
    Ws,
}

/// A rustls server on loopback with `cert`/`key`, requiring a client certificate from `ca.pem`.
async fn tls_server(pki: &Pki, cert: &str, key: &str, serve: Serve) -> (u16, Arc<Seen>) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.path("ca.pem")).expect("ca") {
        roots.add(c.expect("cert")).expect("root");
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("client verifier");
    let chain = CertificateDer::pem_file_iter(pki.path(cert))
        .expect("chain")
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_file(pki.path(key)).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), s.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    seen.handshakes_failed.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                match serve {
                    Serve::Http => {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tls.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        seen.requests.fetch_add(1, Ordering::SeqCst);
                        let body = r#"{"ok":true}"#;
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = tls.write_all(answer.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    }
                    Serve::Ws => {
                        let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                            return;
                        };
                        seen.requests.fetch_add(1, Ordering::SeqCst);
                        while let Some(Ok(m)) = ws.next().await {
                            let Message::Text(t) = m else { continue };
                            let Ok(frame) = serde_json::from_str::<serde_json::Value>(&t) else {
                                continue;
                            };
                            if frame["op"] != "watch" {
                                continue;
                            }
                            let hello = serde_json::json!({
                                "kind": "event",
                                "topic": frame["topic"],
                                "data": {"text": "hello"},
                            });
                            if ws.send(Message::text(hello.to_string())).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (port, seen)
}

fn tls(pki: &Pki, ca: &str, with_client_cert: bool) -> TlsConfig {
    TlsConfig {
        ca_pem: pki.path(ca),
        client_cert_pem: if with_client_cert {
            pki.path("client.pem")
        } else {
            String::new()
        },
        client_key_pem: if with_client_cert {
            pki.path("client.key")
        } else {
            String::new()
        },
    }
}

fn registry(base_url: String, tls: TlsConfig) -> Result<Upstreams, String> {
    let mut c = BackendConfig::new(base_url);
    c.tls = tls;
    c.retry = RetryConfig {
        max_attempts: 1,
        ..RetryConfig::default()
    };
    Upstreams::new(&BTreeMap::from([("secure".to_owned(), c)])).map_err(|e| e.to_string())
}

fn soon() -> Instant {
    Instant::now() + WAIT
}

#[tokio::test]
async fn https_with_the_configured_ca_and_client_certificate_works() {
    let pki = pki();
    let (port, seen) = tls_server(&pki, "server.pem", "server.key", Serve::Http).await;
    for host in ["127.0.0.1", "localhost"] {
        let up = registry(format!("https://{host}:{port}"), tls(&pki, "ca.pem", true))
            .expect("valid registry");
        let body = up
            .execute(&Call::get("secure", "/v1/x"), soon())
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(body, Bytes::from_static(br#"{"ok":true}"#));
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 2);
    assert_eq!(seen.handshakes_failed.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn without_the_client_certificate_the_call_fails_naming_the_backend() {
    let pki = pki();
    let (port, seen) = tls_server(&pki, "server.pem", "server.key", Serve::Http).await;
    let up = registry(
        format!("https://127.0.0.1:{port}"),
        tls(&pki, "ca.pem", false),
    )
    .expect("valid registry");
    let err = up
        .execute(&Call::get("secure", "/v1/x"), soon())
        .await
        .expect_err("the server requires a client certificate");
    assert_eq!(&*err.backend, "secure");
    let text = err.to_string();
    assert!(text.starts_with("backend `secure`: "), "{text}");
    assert!(text.contains("CertificateRequired"), "{text}");
    assert_eq!(
        seen.requests.load(Ordering::SeqCst),
        0,
        "no request got through"
    );
    assert!(seen.handshakes_failed.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn a_server_of_an_untrusted_ca_is_refused() {
    let pki = pki();
    let (port, seen) = tls_server(&pki, "other-server.pem", "other-server.key", Serve::Http).await;
    // Trusting only the system's roots and our CA: the other CA's server is refused.
    let up = registry(
        format!("https://127.0.0.1:{port}"),
        tls(&pki, "ca.pem", true),
    )
    .expect("valid registry");
    let err = up
        .execute(&Call::get("secure", "/v1/x"), soon())
        .await
        .expect_err("untrusted server");
    assert_eq!(&*err.backend, "secure");
    assert_eq!(err.kind.code(), "connect", "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    assert_eq!(seen.requests.load(Ordering::SeqCst), 0);

    // And with the system's roots only (no tls settings), our own CA's server is refused too.
    let (port, _) = tls_server(&pki, "server.pem", "server.key", Serve::Http).await;
    let up = registry(format!("https://127.0.0.1:{port}"), TlsConfig::default())
        .expect("valid registry");
    let err = up
        .execute(&Call::get("secure", "/v1/x"), soon())
        .await
        .expect_err("private CA not configured");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

#[test]
fn unusable_tls_settings_are_refused_at_startup_naming_the_backend_and_setting() {
    let pki = pki();
    let cases = [
        (
            "http://127.0.0.1:1",
            tls(&pki, "ca.pem", true),
            "backend `secure`: base_url `http://127.0.0.1:1`: tls settings need an https:// base_url",
        ),
        (
            "https://127.0.0.1:1",
            TlsConfig {
                client_cert_pem: pki.path("client.pem"),
                ..TlsConfig::default()
            },
            "backend `secure`: tls.client_cert_pem is set without tls.client_key_pem",
        ),
        (
            "https://127.0.0.1:1",
            TlsConfig {
                ca_pem: pki.path("client.key"),
                ..TlsConfig::default()
            },
            "no certificate in the file",
        ),
        (
            "https://127.0.0.1:1",
            TlsConfig {
                ca_pem: pki.path("missing.pem"),
                ..TlsConfig::default()
            },
            "backend `secure`: tls.ca_pem `",
        ),
        (
            "ftp://127.0.0.1:1",
            TlsConfig::default(),
            "only http:// and https:// backends are supported",
        ),
    ];
    for (url, tls, expected) in cases {
        let err = registry(url.to_owned(), tls).expect_err(url);
        assert!(err.contains(expected), "{err}");
    }
}

/// A `json-ws` source of the toy protocol at `url` (the `toy.{name}` channels).
fn source_config(url: String, tls: TlsConfig) -> SourceConfig {
    let mut c = SourceConfig::new(SourceKind::JsonWs, url, "toy.{name}");
    c.subscribe = Some(r#"{"op":"watch","topic":"{name}"}"#.into());
    c.messages = vec![switchyard_core::sources::rules::RuleConfig {
        when: [("/kind".to_owned(), "event".to_owned())].into(),
        capture: [("/topic".to_owned(), "{name}".to_owned())].into(),
        payload: Some("/data".into()),
        ..Default::default()
    }];
    c.connect_timeout_ms = 1_000;
    c.reconnect_initial_ms = 10;
    c.reconnect_max_ms = 100;
    c.tls = tls;
    c
}

fn wss_config(port: u16, tls: TlsConfig) -> SourceConfig {
    source_config(format!("wss://localhost:{port}/ws"), tls)
}

fn catalog() -> Arc<Catalog> {
    let config = ChannelsConfig {
        catalog: vec![ChannelConfig {
            pattern: "toy.{name}".into(),
            class: TopicClass::State,
            history_events: 1,
            max_payload_bytes: 1024,
            subscribe: SubscribeRule::Public,
            publishers: Vec::new(),
            idle_expiry_ms: None,
        }],
    };
    Arc::new(Catalog::new(&config).expect("catalog"))
}

fn start(config: &SourceConfig, bus: Arc<dyn Bus>) -> Result<Source, String> {
    Source::start("toy", config, catalog(), bus)
}

#[tokio::test]
async fn a_wss_source_uses_the_same_tls_settings() {
    let pki = pki();
    let (port, seen) = tls_server(&pki, "server.pem", "server.key", Serve::Ws).await;
    let bus = Arc::new(MemoryBus::new(16));
    let channel = ChannelName::parse("toy.a").expect("channel");
    let mut events = bus
        .subscribe(&channel.topic(), StartAt::Live)
        .await
        .expect("subscribe");
    let source = start(
        &wss_config(port, tls(&pki, "ca.pem", true)),
        bus.clone() as Arc<dyn Bus>,
    )
    .expect("starts");
    let _guard = source.want(&channel).expect("the source feeds toy.a");
    let first = tokio::time::timeout(WAIT, events.next())
        .await
        .expect("the watch's answer is published")
        .expect("open");
    assert!(
        matches!(&first, Delivery::Event(e) if e.payload == r#"{"text":"hello"}"#),
        "{first:?}"
    );
    assert_eq!(seen.requests.load(Ordering::SeqCst), 1);
    assert!(source.stats().connected);

    // Without the client certificate the server refuses every attempt; the source keeps trying
    // and never connects.
    let (port, seen) = tls_server(&pki, "server.pem", "server.key", Serve::Ws).await;
    let refused = start(
        &wss_config(port, tls(&pki, "ca.pem", false)),
        bus.clone() as Arc<dyn Bus>,
    )
    .expect("starts");
    let _guard = refused.want(&channel).expect("the source feeds toy.a");
    assert!(
        eventually(WAIT, || async {
            seen.handshakes_failed.load(Ordering::SeqCst) >= 2
        })
        .await
    );
    assert!(!refused.stats().connected);
    assert_eq!(refused.stats().connects_total, 0);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 0);

    // A wss:// source to a server of a CA it does not trust never connects either.
    let (port, seen) = tls_server(&pki, "other-server.pem", "other-server.key", Serve::Ws).await;
    let untrusted = start(
        &wss_config(port, tls(&pki, "ca.pem", true)),
        bus.clone() as Arc<dyn Bus>,
    )
    .expect("starts");
    let _guard = untrusted.want(&channel).expect("the source feeds toy.a");
    assert!(
        eventually(WAIT, || async {
            seen.handshakes_failed.load(Ordering::SeqCst) >= 2
        })
        .await
    );
    assert_eq!(untrusted.stats().connects_total, 0);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unusable_source_tls_settings_are_refused_at_start_naming_the_source() {
    let pki = pki();
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(16));
    // TLS settings on a ws:// URL would be silently unused.
    let err = start(
        &source_config("ws://127.0.0.1:1/ws".into(), tls(&pki, "ca.pem", true)),
        bus.clone(),
    )
    .expect_err("tls on ws://");
    assert!(err.starts_with("sources.toy.tls: "), "{err}");
    assert!(err.contains("wss://"), "{err}");
    // A CA file that is not there.
    let missing = TlsConfig {
        ca_pem: pki.path("missing.pem"),
        ..TlsConfig::default()
    };
    let err = start(&wss_config(1, missing), bus.clone()).expect_err("missing CA file");
    assert!(err.starts_with("sources.toy.tls: "), "{err}");
    assert!(err.contains("missing.pem"), "{err}");
    // A client certificate without its key.
    let half = TlsConfig {
        client_cert_pem: pki.path("client.pem"),
        ..TlsConfig::default()
    };
    let err = start(&wss_config(1, half), bus).expect_err("no client key");
    assert!(err.contains("client_key_pem"), "{err}");
}
