//! Loading configuration over the binaries' own defaults: an override (environment or file)
//! changes exactly the key it names — in every section of the launcher, where the defaults are
//! the demo stack's (demo secret, admin token, demo device), and in a gateway's named tables —
//! and a name a gateway does not know is an error naming its key. Loads only; nothing is started
//! (tests/cli.rs runs the binary).

use std::path::PathBuf;

use switchyard::{Config, DEMO_ADMIN_TOKEN, DEMO_DEVICE, DEMO_SECRET, ENV_PREFIX};
use switchyard_core::upstream::BackendConfig;
use switchyard_server::config::{ConfigError, Source};

fn env(vars: &[(&str, &str)]) -> Source {
    Source::new(
        None,
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn file(text: &str) -> Source {
    Source::new(
        Some((PathBuf::from("test.toml"), text.to_owned())),
        Vec::new(),
    )
}

fn launcher(source: &Source) -> Config {
    source.load(ENV_PREFIX).expect("the configuration loads")
}

/// What the demo stack's own defaults promise in every gateway section.
fn assert_demo_defaults_kept(c: &Config) {
    assert_eq!(
        c.web.auth.hs256_secret, DEMO_SECRET,
        "web.auth.hs256_secret"
    );
    assert_eq!(
        c.mobile.auth.hs256_secret, DEMO_SECRET,
        "mobile.auth.hs256_secret"
    );
    assert_eq!(c.device.admin.token, DEMO_ADMIN_TOKEN, "device.admin.token");
    assert!(c.device.devices.contains_key(DEMO_DEVICE), "device.devices");
    for (section, backends, sources, files) in [
        ("web", &c.web.backends, &c.web.sources, true),
        ("mobile", &c.mobile.backends, &c.mobile.sources, true),
        ("device", &c.device.backends, &c.device.sources, false),
    ] {
        // No source of its own: the launcher adds the exchange when it starts the stack.
        assert!(sources.is_empty(), "{section}.sources: {sources:?}");
        let mut want = vec!["conversions", "exchange", "limits"];
        if files {
            // The file routes' backend (bff-web and bff-mobile only).
            want.push("statements");
        }
        assert_eq!(
            backends.keys().collect::<Vec<_>>(),
            want,
            "{section}.backends"
        );
    }
}

#[test]
fn a_web_override_changes_only_its_key_and_keeps_the_demo_secret() {
    let mut want = Config::default();
    want.web.server.listen = "127.0.0.1:18080".parse().unwrap();
    for source in [
        env(&[("SWITCHYARD__WEB__SERVER__LISTEN", "127.0.0.1:18080")]),
        file("[web.server]\nlisten = \"127.0.0.1:18080\"\n"),
    ] {
        let got = launcher(&source);
        assert_demo_defaults_kept(&got);
        assert_eq!(got, want);
    }
}

#[test]
fn a_mobile_override_changes_only_its_key_and_keeps_the_demo_secret() {
    let mut want = Config::default();
    want.mobile.websocket.max_subscriptions = 7;
    for source in [
        env(&[("SWITCHYARD__MOBILE__WEBSOCKET__MAX_SUBSCRIPTIONS", "7")]),
        file("[mobile.websocket]\nmax_subscriptions = 7\n"),
    ] {
        let got = launcher(&source);
        assert_demo_defaults_kept(&got);
        assert_eq!(got, want);
    }
}

#[test]
fn a_device_override_changes_only_its_key_and_keeps_the_admin_token_and_demo_device() {
    let mut want = Config::default();
    want.device.server.listen = "127.0.0.1:18082".parse().unwrap();
    for source in [
        env(&[("SWITCHYARD__DEVICE__SERVER__LISTEN", "127.0.0.1:18082")]),
        file("[device.server]\nlisten = \"127.0.0.1:18082\"\n"),
    ] {
        let got = launcher(&source);
        assert_demo_defaults_kept(&got);
        assert_eq!(got, want);
    }
    // One key of the demo device itself: its other keys (key, rates, the greeting) stay.
    let mut want = Config::default();
    let demo = want.device.devices.get_mut(DEMO_DEVICE).unwrap();
    demo.settings.insert("volume".to_owned(), 7.into());
    let got = launcher(&env(&[(
        "SWITCHYARD__DEVICE__DEVICES__DEMO-TV__SETTINGS__VOLUME",
        "7",
    )]));
    assert_eq!(got, want);
}

#[test]
fn a_demo_service_override_changes_only_its_key() {
    let mut want = Config::default();
    want.conversions
        .backends
        .get_mut("limits")
        .unwrap()
        .request_timeout_ms = 9;
    want.limits.server.listen = "127.0.0.1:19101".parse().unwrap();
    want.exchange.tick_interval_ms = 5;
    for source in [
        env(&[
            (
                "SWITCHYARD__CONVERSIONS__BACKENDS__LIMITS__REQUEST_TIMEOUT_MS",
                "9",
            ),
            ("SWITCHYARD__LIMITS__SERVER__LISTEN", "127.0.0.1:19101"),
            ("SWITCHYARD__EXCHANGE__TICK_INTERVAL_MS", "5"),
        ]),
        file(
            "[conversions.backends.limits]\nrequest_timeout_ms = 9\n\
             [limits.server]\nlisten = \"127.0.0.1:19101\"\n\
             [exchange]\ntick_interval_ms = 5\n",
        ),
    ] {
        let got = launcher(&source);
        assert_demo_defaults_kept(&got);
        assert_eq!(got, want);
    }
}

#[test]
fn the_launcher_refuses_gateways_left_without_a_key_naming_it() {
    for section in ["web", "mobile"] {
        let var = format!("SWITCHYARD__{}__AUTH__HS256_SECRET", section.to_uppercase());
        let config = launcher(&env(&[(&var, "")]));
        let err = config.check().unwrap_err().to_string();
        assert!(
            err.contains(&format!("{section}.auth.hs256_secret")),
            "{err}"
        );
    }
    assert!(Config::default().check().is_ok());
    let mut jwks_only = Config::default();
    jwks_only.web.auth.hs256_secret.clear();
    jwks_only.web.auth.jwks_url = "http://127.0.0.1:1/jwks.json".to_owned();
    assert!(jwks_only.check().is_ok(), "another key is a key");
    // But `switchyard token` signs with the HS256 secret only.
    let err = jwks_only.token_secret().unwrap_err().to_string();
    assert!(err.contains("web.auth.hs256_secret"), "{err}");
    assert_eq!(Config::default().token_secret().unwrap(), DEMO_SECRET);
}

/// The three gateways, loaded standalone from a file.
fn gateway_error(text: &str) -> Vec<String> {
    let source = file(text);
    let errors: [Result<(), ConfigError>; 3] = [
        source
            .load::<bff_web::Config>(bff_web::ENV_PREFIX)
            .map(drop),
        source
            .load::<bff_mobile::Config>(bff_mobile::ENV_PREFIX)
            .map(drop),
        source
            .load::<bff_device::Config>(bff_device::ENV_PREFIX)
            .map(drop),
    ];
    errors
        .into_iter()
        .map(|r| r.expect_err("an unknown name is refused").to_string())
        .collect()
}

#[test]
fn a_misspelt_source_or_an_unknown_backend_name_is_an_error_naming_the_key() {
    for (text, key) in [
        // A misspelt source is a new source, without the keys every source needs.
        (
            "[sources.exchnage]\nurl = \"ws://10.0.0.1:9102/v1/ticks\"\n",
            "`sources.exchnage`",
        ),
        (
            "[sources.exchange]\nkind = \"socket.io\"\n",
            "`sources.exchange.kind`",
        ),
        (
            "[backends.limts]\nbase_url = \"http://10.0.0.1:9101\"\n",
            "`backends.limts`",
        ),
    ] {
        for err in gateway_error(text) {
            assert!(err.contains(key), "{text}: {err}");
        }
    }
    // The same under the launcher, from the environment.
    let err = env(&[("SWITCHYARD__DEVICE__SOURCES__EXCHNAGE__URL", "ws://x")])
        .load::<Config>(ENV_PREFIX)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`device.sources.exchnage`"), "{err}");
}

#[test]
fn a_backend_table_with_only_base_url_keeps_every_other_default() {
    let text = "[backends.limits]\nbase_url = \"http://10.0.0.1:9101\"\n";
    let mut want = operations::default_backends();
    want.insert(
        "limits".to_owned(),
        BackendConfig::new("http://10.0.0.1:9101"),
    );
    let source = file(text);
    let web: bff_web::Config = source.load(bff_web::ENV_PREFIX).unwrap();
    let mobile: bff_mobile::Config = source.load(bff_mobile::ENV_PREFIX).unwrap();
    let device: bff_device::Config = source.load(bff_device::ENV_PREFIX).unwrap();
    assert_eq!(device.backends, want);
    // bff-web and bff-mobile have the file routes' backend too, at its default.
    want.insert(
        "statements".to_owned(),
        BackendConfig::new("http://127.0.0.1:9104"),
    );
    assert_eq!(web.backends, want);
    assert_eq!(mobile.backends, want);
    // And a source table gets every default it does not name.
    let text = "[sources.exchange]\nkind = \"json-ws\"\nurl = \"ws://10.0.0.1:9102/v1/ticks\"\n\
                channels = \"rates.{base}-{quote}\"\nlease_ttl_ms = 9000\n\
                [[sources.exchange.messages]]\ncapture = { \"/pair\" = \"{base}/{quote}\" }\n";
    let web: bff_web::Config = file(text).load(bff_web::ENV_PREFIX).unwrap();
    let mut want = switchyard_core::sources::SourceConfig::new(
        switchyard_core::sources::SourceKind::JsonWs,
        "ws://10.0.0.1:9102/v1/ticks",
        "rates.{base}-{quote}",
    );
    want.lease_ttl_ms = 9000;
    want.messages = vec![switchyard_core::sources::rules::RuleConfig {
        capture: [("/pair".to_owned(), "{base}/{quote}".to_owned())].into(),
        ..Default::default()
    }];
    assert_eq!(web.sources["exchange"], want);
}

#[test]
fn mobile_max_frame_bytes_is_still_read_as_max_message_bytes() {
    use switchyard_server::cli::ServerBinary;
    // bff-mobile's binary declares the rename, and reads the old key from a file and from the
    // environment, with a warning each.
    assert_eq!(
        <bff_mobile::Config as ServerBinary>::RENAMED_KEYS,
        bff_mobile::RENAMED_KEYS
    );
    let (mobile, warnings): (bff_mobile::Config, _) = file("[websocket]\nmax_frame_bytes = 1234\n")
        .load_renamed(bff_mobile::ENV_PREFIX, bff_mobile::RENAMED_KEYS)
        .expect("the old key loads");
    assert_eq!(mobile.websocket.max_message_bytes, 1234);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let var = format!("{}__WEBSOCKET__MAX_FRAME_BYTES", bff_mobile::ENV_PREFIX);
    let (mobile, warnings): (bff_mobile::Config, _) = env(&[(&var, "4321")])
        .load_renamed(bff_mobile::ENV_PREFIX, bff_mobile::RENAMED_KEYS)
        .expect("the old variable loads");
    assert_eq!(mobile.websocket.max_message_bytes, 4321);
    assert!(warnings[0].contains(&var), "{warnings:?}");
    let both = file("[websocket]\nmax_frame_bytes = 1\nmax_message_bytes = 2\n")
        .load_renamed::<bff_mobile::Config>(bff_mobile::ENV_PREFIX, bff_mobile::RENAMED_KEYS)
        .unwrap_err()
        .to_string();
    assert!(
        both.contains("max_frame_bytes") && both.contains("max_message_bytes"),
        "{both}"
    );
    // The launcher's `[mobile]` section too.
    let (stack, _): (Config, _) = file("[mobile.websocket]\nmax_frame_bytes = 999\n")
        .load_renamed(ENV_PREFIX, switchyard::RENAMED_KEYS)
        .expect("the old key loads in the launcher");
    assert_eq!(stack.mobile.websocket.max_message_bytes, 999);
    assert_demo_defaults_kept(&stack);
}

#[test]
fn the_publish_api_keeps_the_demo_key_when_its_address_moves_and_refuses_a_key_for_a_hash() {
    let c = launcher(&env(&[("SWITCHYARD__PUBLISH__LISTEN", "127.0.0.1:0")]));
    assert_eq!(c.publish.listen, "127.0.0.1:0");
    assert_eq!(c.publish.keys.len(), 1);
    assert_eq!(c.publish.keys[0].publisher, switchyard::DEMO_PUBLISHER);
    let demo = switchyard_core::keyhash::sha256(switchyard::DEMO_PUBLISHER_KEY.as_bytes());
    assert_eq!(
        switchyard_core::keyhash::from_hex(&c.publish.keys[0].sha256),
        Some(demo)
    );
    assert_eq!(Config::default().publish.listen, "127.0.0.1:8090");
    // The key itself where its hash belongs is an error naming the key at fault.
    let err = file(&format!(
        "[publish]\nkeys = [{{ publisher = \"orders\", sha256 = \"{}\" }}]\n",
        switchyard::DEMO_PUBLISHER_KEY
    ))
    .load::<Config>(ENV_PREFIX)
    .expect_err("a key is not a hash")
    .to_string();
    assert!(err.contains("publish"), "{err}");
    assert!(err.contains("keys[0].sha256"), "{err}");
}

#[test]
fn up_serves_each_gateways_metrics_on_an_internal_port_and_tests_on_none() {
    let urls = switchyard::Config::default().metrics_urls();
    assert_eq!(
        urls,
        [
            ("bff-web", Some("http://127.0.0.1:9464/metrics".to_owned())),
            (
                "bff-mobile",
                Some("http://127.0.0.1:9465/metrics".to_owned())
            ),
            (
                "bff-device",
                Some("http://127.0.0.1:9466/metrics".to_owned())
            ),
            ("limits", Some("http://127.0.0.1:9467/metrics".to_owned())),
            ("exchange", Some("http://127.0.0.1:9468/metrics".to_owned())),
            (
                "conversions",
                Some("http://127.0.0.1:9469/metrics".to_owned())
            ),
            (
                "statements",
                Some("http://127.0.0.1:9470/metrics".to_owned())
            ),
        ]
    );
    assert!(switchyard::Config::ephemeral().metrics_urls().is_empty());
    let mut config = switchyard::Config::ephemeral();
    config.device.metrics.listen = "127.0.0.1:0".to_owned();
    assert_eq!(config.metrics_urls(), [("bff-device", None)]);
}
