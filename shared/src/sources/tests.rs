//! Unit tests of the source engine: configuration checks.

use super::*;

fn exchange() -> SourceConfig {
    let mut c = SourceConfig::new(
        SourceKind::JsonWs,
        "ws://127.0.0.1:9102/v1/ticks",
        "rates.{base}-{quote}",
    );
    c.subscribe = Some(r#"{"op":"watch","pairs":["{base}/{quote}"]}"#.into());
    c.unsubscribe = Some(r#"{"op":"unwatch","pairs":["{base}/{quote}"]}"#.into());
    c.messages = vec![rules::RuleConfig {
        capture: [("/pair".to_owned(), "{base}/{quote}".to_owned())].into(),
        ..Default::default()
    }];
    c
}

#[test]
fn a_json_ws_source_checks() {
    let checked = exchange().check().unwrap();
    assert_eq!(checked.channels.prefix(), "rates.");
}

/// A change to a valid configuration, and the key its error must start with.
type Case = (Box<dyn Fn(&mut SourceConfig)>, &'static str);

#[test]
fn configuration_errors_name_the_key() {
    let cases: Vec<Case> = vec![
        (Box::new(|c| c.url = "http://x".into()), "url:"),
        (
            Box::new(|c| c.channels = "{base}-{quote}".into()),
            "channels:",
        ),
        (Box::new(|c| c.channels = "a.{x}{y}".into()), "channels:"),
        (Box::new(|c| c.namespace = Some("/".into())), "namespace:"),
        (Box::new(|c| c.patterns = vec!["a*".into()]), "patterns:"),
        (Box::new(|c| c.messages.clear()), "messages:"),
        (
            Box::new(|c| c.subscribe = Some("{\"s\":\"{symbol}\"}".into())),
            "subscribe:",
        ),
        (
            Box::new(|c| {
                c.headers.insert("bad header".into(), "x".into());
            }),
            "headers.bad header",
        ),
        (
            Box::new(|c| {
                c.headers.insert("x-a".into(), "line\nbreak".into());
            }),
            "headers.x-a",
        ),
    ];
    for (change, key) in cases {
        let mut c = exchange();
        change(&mut c);
        let e = c.check().unwrap_err();
        assert!(e.starts_with(key), "{key}: {e}");
    }
}

#[test]
fn an_unknown_kind_or_key_is_an_error() {
    let e = toml::from_str::<SourceConfig>(
        r#"kind = "socket.io"
url = "http://x"
channels = "a"
"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("socket.io") && e.contains("socketio"), "{e}");
    let e = toml::from_str::<SourceConfig>(
        r#"kind = "sse"
url = "http://x"
channels = "a"
reconect_max_ms = 5
"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("reconect_max_ms"), "{e}");
}

#[tokio::test]
async fn at_most_max_channels_are_wanted_at_once() {
    let mut config = exchange();
    config.max_channels = 2;
    // Port 9 (discard): nothing answers; the source keeps retrying, which does not matter here.
    config.url = "ws://127.0.0.1:9/".into();
    let catalog = Arc::new(
        Catalog::new(&crate::channels::ChannelsConfig {
            catalog: vec![crate::channels::ChannelConfig {
                pattern: "rates.{pair}".into(),
                class: crate::event::TopicClass::State,
                history_events: 1,
                max_payload_bytes: 1024,
                subscribe: crate::channels::SubscribeRule::Public,
                publishers: Vec::new(),
                idle_expiry_ms: None,
            }],
        })
        .unwrap(),
    );
    let bus: Arc<dyn Bus> = Arc::new(crate::bus::memory::MemoryBus::new(10));
    let source = Source::start("exchange", &config, catalog, bus).unwrap();
    let name = |s: &str| ChannelName::parse(s).unwrap();
    let a = source.want(&name("rates.EUR-USD")).expect("the first");
    let b = source.want(&name("rates.GBP-USD")).expect("the second");
    assert!(
        source.want(&name("rates.USD-JPY")).is_none(),
        "a third is over"
    );
    let again = source.want(&name("rates.EUR-USD"));
    assert!(again.is_some(), "a channel already wanted is always fed");
    let stats = source.stats();
    assert_eq!((stats.wanted_channels, stats.over_capacity_total), (2, 1));
    drop((a, b, again));
    assert!(source.want(&name("rates.USD-JPY")).is_some(), "room again");
    source.shutdown();
}
