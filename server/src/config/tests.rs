//! Unit tests of `config`: layering, unknown keys, overrides, named tables and renamed keys.

use std::collections::BTreeMap;

use switchyard_core::bus::BusConfig;
use switchyard_core::upstream::{BackendConfig, RetryConfig};

use super::*;

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Demo {
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    backends: BTreeMap<String, BackendConfig>,
}

fn source(text: &str, env: &[(&str, &str)]) -> Source {
    Source::new(
        Some(("demo.toml".into(), text.into())),
        env.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

#[test]
fn unknown_key_is_an_error_naming_the_key() {
    let text = "[backends.exchange]\nbase_url = \"http://x\"\nrequest_timeout = 5\n";
    let err = source(text, &[]).load::<Demo>("T").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("backends.exchange"), "{msg}");
    assert!(msg.contains("request_timeout"), "{msg}");
}

#[test]
fn unknown_top_level_section_is_an_error() {
    let err = source("[servr]\nlisten = \"127.0.0.1:1\"\n", &[])
        .load::<Demo>("T")
        .unwrap_err();
    assert!(err.to_string().contains("servr"), "{err}");
}

#[test]
fn environment_override_wins_over_the_file() {
    let text = "[server]\nlisten = \"127.0.0.1:1000\"\nbody_limit_bytes = 10\n";
    let cfg: Demo = source(
        text,
        &[
            ("T__SERVER__LISTEN", "127.0.0.1:2000"),
            ("T__SERVER__BODY_LIMIT_BYTES", "20"),
            ("OTHER__SERVER__LISTEN", "127.0.0.1:3000"),
        ],
    )
    .load("T")
    .unwrap();
    assert_eq!(cfg.server.listen, "127.0.0.1:2000".parse().unwrap());
    assert_eq!(cfg.server.body_limit_bytes, 20);
}

#[test]
fn environment_can_add_a_nested_table() {
    let cfg: Demo = source("", &[("T__BACKENDS__LIMITS__BASE_URL", "http://l:1")])
        .load("T")
        .unwrap();
    assert_eq!(cfg.backends["limits"].base_url, "http://l:1");
    assert_eq!(cfg.backends["limits"].retry, RetryConfig::default());
}

#[test]
fn unknown_environment_key_is_an_error_naming_it() {
    let err = source("", &[("T__SERVER__LISTN", "x")])
        .load::<Demo>("T")
        .unwrap_err();
    assert!(err.to_string().contains("listn"), "{err}");
}

#[test]
fn wrong_type_names_the_key() {
    let err = source("[server]\nbody_limit_bytes = \"big\"\n", &[])
        .load::<Demo>("T")
        .unwrap_err();
    assert!(err.to_string().contains("server.body_limit_bytes"), "{err}");
}

#[test]
fn syntax_error_names_the_file() {
    let err = source("[server\n", &[]).load::<Demo>("T").unwrap_err();
    assert!(err.to_string().contains("demo.toml"), "{err}");
}

/// A binary whose defaults differ from its types' defaults, with named backends.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct Layered {
    server: ServerConfig,
    #[serde(deserialize_with = "known_backends")]
    backends: BTreeMap<String, BackendConfig>,
}

impl Default for Layered {
    fn default() -> Self {
        let mut server = ServerConfig::on("127.0.0.1:7".parse().unwrap());
        server.body_limit_bytes = 5;
        Self {
            server,
            backends: BTreeMap::from([
                ("a".to_owned(), BackendConfig::new("http://a")),
                ("b".to_owned(), BackendConfig::new("http://b")),
            ]),
        }
    }
}

fn known_backends<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, BackendConfig>, D::Error> {
    only_known(d, "backend", &["a", "b"])
}

#[test]
fn an_override_changes_only_the_key_it_names() {
    let mut want = Layered::default();
    want.server.drain_timeout_ms = 9;
    let by_env: Layered = source("", &[("T__SERVER__DRAIN_TIMEOUT_MS", "9")])
        .load("T")
        .unwrap();
    assert_eq!(by_env, want);
    let by_file: Layered = source("[server]\ndrain_timeout_ms = 9\n", &[])
        .load("T")
        .unwrap();
    assert_eq!(by_file, want);

    let mut want = Layered::default();
    want.backends.get_mut("a").unwrap().base_url = "http://x".into();
    let by_file: Layered = source("[backends.a]\nbase_url = \"http://x\"\n", &[])
        .load("T")
        .unwrap();
    assert_eq!(by_file, want);
    let by_env: Layered = source("", &[("T__BACKENDS__A__BASE_URL", "http://x")])
        .load("T")
        .unwrap();
    assert_eq!(by_env, want);
}

#[test]
fn a_name_the_binary_does_not_know_is_an_error_at_its_key() {
    for src in [
        source("[backends.c]\nbase_url = \"http://c\"\n", &[]),
        source("", &[("T__BACKENDS__C__BASE_URL", "http://c")]),
    ] {
        let err = src.load::<Layered>("T").unwrap_err().to_string();
        assert!(err.contains("`backends.c`"), "{err}");
        assert!(err.contains("known: a, b"), "{err}");
    }
}

#[test]
fn defaults_round_trip_through_print_config() {
    let cfg = Demo {
        server: ServerConfig::default(),
        backends: BTreeMap::from([("x".to_owned(), BackendConfig::new("http://x"))]),
    };
    #[derive(Serialize)]
    struct Ser<'a> {
        server: &'a ServerConfig,
        backends: &'a BTreeMap<String, BackendConfig>,
    }
    let text = to_toml(&Ser {
        server: &cfg.server,
        backends: &cfg.backends,
    });
    let back: Demo = source(&text, &[]).load("T").unwrap();
    assert_eq!(back, cfg);
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WithBus {
    #[serde(default)]
    bus: BusConfig,
}

#[test]
fn bus_section_is_checked_at_load() {
    let ok: WithBus = source("[bus]\nkind = \"redis\"\nprefix = \"eu-1\"\n", &[])
        .load("T")
        .unwrap();
    assert_eq!(ok.bus.broker_url(), "redis://127.0.0.1:6379");
    assert_eq!(ok.bus.prefix, "eu-1");
    for (text, needle) in [
        ("[bus]\nkind = \"kafka\"\n", "kafka"),
        ("[bus]\nkind = \"nats\"\nprefix = \"a.b\"\n", "bus.prefix"),
        ("[bus]\nkind = \"redis\"\nurl = \"http://x\"\n", "bus.url"),
        ("[bus]\nkind = \"nats\"\nurl = \"nats://\"\n", "bus.url"),
        ("[bus]\nhistory = 5\n", "history"),
    ] {
        let err = source(text, &[]).load::<WithBus>("T").unwrap_err();
        assert!(err.to_string().contains(needle), "{text}: {err}");
    }
}

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct Renamed {
    websocket: RenamedSocket,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
struct RenamedSocket {
    max_message_bytes: u32,
    max_calls: u32,
}

impl Default for RenamedSocket {
    fn default() -> Self {
        Self {
            max_message_bytes: 100,
            max_calls: 7,
        }
    }
}

const RENAMES: &[RenamedKey] = &[RenamedKey {
    old: "websocket.max_frame_bytes",
    new: "websocket.max_message_bytes",
}];

fn load_renamed(text: &str, env: &[(&str, &str)]) -> Result<(Renamed, Vec<String>), ConfigError> {
    source(text, env).load_renamed("T", RENAMES)
}

#[test]
fn an_old_key_in_the_file_is_read_as_the_new_one_with_a_warning() {
    let (config, warnings) =
        load_renamed("[websocket]\nmax_frame_bytes = 5\n", &[]).expect("old key accepted");
    assert_eq!(config.websocket.max_message_bytes, 5);
    assert_eq!(
        config.websocket.max_calls, 7,
        "other keys keep their defaults"
    );
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].contains("websocket.max_frame_bytes"),
        "{warnings:?}"
    );
    assert!(
        warnings[0].contains("websocket.max_message_bytes"),
        "{warnings:?}"
    );
    assert!(warnings[0].contains("demo.toml"), "{warnings:?}");
}

#[test]
fn an_old_key_in_the_environment_is_read_as_the_new_one_with_a_warning() {
    let (config, warnings) = load_renamed(
        "[websocket]\nmax_message_bytes = 5\n",
        &[("T__WEBSOCKET__MAX_FRAME_BYTES", "9")],
    )
    .expect("old variable accepted");
    assert_eq!(config.websocket.max_message_bytes, 9, "the override wins");
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].contains("T__WEBSOCKET__MAX_FRAME_BYTES"),
        "{warnings:?}"
    );
}

#[test]
fn the_new_key_loads_without_a_warning() {
    let (config, warnings) = load_renamed(
        "[websocket]\nmax_message_bytes = 5\n",
        &[("T__WEBSOCKET__MAX_MESSAGE_BYTES", "6")],
    )
    .expect("new key accepted");
    assert_eq!(config.websocket.max_message_bytes, 6);
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn both_names_in_a_file_are_an_error_naming_both() {
    let err = load_renamed(
        "[websocket]\nmax_frame_bytes = 5\nmax_message_bytes = 6\n",
        &[],
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("websocket.max_frame_bytes"), "{msg}");
    assert!(msg.contains("websocket.max_message_bytes"), "{msg}");
}

#[test]
fn both_names_in_the_environment_are_an_error_naming_both() {
    let err = load_renamed(
        "",
        &[
            ("T__WEBSOCKET__MAX_FRAME_BYTES", "5"),
            ("T__WEBSOCKET__MAX_MESSAGE_BYTES", "6"),
        ],
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("websocket.max_frame_bytes"), "{msg}");
    assert!(msg.contains("websocket.max_message_bytes"), "{msg}");
}

#[test]
fn without_renames_an_old_key_is_still_unknown() {
    let err = source("[websocket]\nmax_frame_bytes = 5\n", &[])
        .load::<Renamed>("T")
        .unwrap_err();
    assert!(err.to_string().contains("max_frame_bytes"), "{err}");
}

#[test]
fn log_otlp_is_off_by_default_and_checked_when_set() {
    let off = super::OtlpConfig::default();
    assert_eq!(off.traces_url().unwrap(), None);
    let on = super::OtlpConfig {
        endpoint: "http://127.0.0.1:4318/".into(),
        ..Default::default()
    };
    assert_eq!(
        on.traces_url().unwrap().as_deref(),
        Some("http://127.0.0.1:4318/v1/traces")
    );
    for (bad, key) in [
        (
            super::OtlpConfig {
                endpoint: "127.0.0.1:4318".into(),
                ..Default::default()
            },
            "log.otlp.endpoint",
        ),
        (
            super::OtlpConfig {
                sample_ratio: 1.5,
                ..Default::default()
            },
            "log.otlp.sample_ratio",
        ),
    ] {
        match bad.traces_url() {
            Err(super::ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key),
            other => panic!("{key}: {other:?}"),
        }
    }
}
