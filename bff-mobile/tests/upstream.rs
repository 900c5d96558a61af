//! Rates through the real exchange service's ticker: many mobile subscribers of one pair share
//! ONE upstream subscription (the hub's feeder and the exchange's json-ws source), released when the last
//! one leaves; and a `quote` call against the real exchange.

mod common;

use std::time::Duration;

use common::{config, start};
use demo_api::ExchangeStats;
use mobile_proto::{ClientMsg, Encoding, ServerMsg, data};
use switchyard_core::upstream::BackendConfig;
use switchyard_server::server::CancellationToken;

async fn stats(url: &str) -> ExchangeStats {
    reqwest::get(format!("{url}/v1/stats"))
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json")
}

#[tokio::test]
async fn many_subscribers_of_a_pair_share_one_upstream_subscription() {
    let exchange_config = demo_services::exchange::Config {
        tick_interval_ms: 20,
        ..Default::default()
    };
    let exchange = test_support::serve(
        demo_services::exchange::router(&exchange_config, CancellationToken::new())
            .expect("exchange builds"),
    )
    .await;
    let mut cfg = config();
    cfg.sources.insert(
        operations::sources::EXCHANGE_SOURCE.to_owned(),
        operations::sources::exchange_source(&format!("ws://{}/v1/ticks", exchange.addr)),
    );
    cfg.backends
        .insert("exchange".to_owned(), BackendConfig::new(exchange.url()));
    let gw = start(cfg, 100).await;

    let mut clients = Vec::new();
    for i in 0..20 {
        let enc = Encoding::ALL[i % 2];
        let mut c = gw.signed_in(enc, &format!("u{i}")).await;
        c.subbed("rates:EUR/USD", None).await;
        clients.push(c);
    }
    for c in &mut clients {
        let ev = loop {
            match c.recv().await {
                ServerMsg::Event(e) => break e,
                ServerMsg::Ping(_) => continue,
                other => panic!("expected a rate, got {other:?}"),
            }
        };
        let rate: data::Rate = ev.data_as().unwrap();
        assert_eq!(rate.pair, "EUR/USD");
    }
    let s = stats(&exchange.url()).await;
    assert_eq!(s.connections, 1, "{s:?}");
    assert_eq!(s.watchers.get("EUR/USD"), Some(&1), "{s:?}");
    assert_eq!((gw.app_topics)(), 1);

    // A quote against the real exchange (limits is unreachable: a partial result).
    let c = &mut clients[0];
    let serde_json::Value::Object(args) =
        serde_json::json!({"from": "EUR", "to": "USD", "amount": "100"})
    else {
        unreachable!()
    };
    c.send(&ClientMsg::Call(mobile_proto::Call {
        id: 1,
        op: "quote".into(),
        args,
    }))
    .await;
    let result = loop {
        match c.recv().await {
            ServerMsg::Result(r) => break r,
            ServerMsg::Event(_) | ServerMsg::Ping(_) => continue,
            other => panic!("expected a result, got {other:?}"),
        }
    };
    let q: data::Quote = result.data_as().unwrap();
    assert_eq!(q.pair, "EUR/USD");
    assert_eq!(q.remaining_limit, None);
    assert_eq!(q.errors.len(), 1);

    // The last one leaving releases the upstream subscription.
    drop(clients);
    let url = exchange.url();
    assert!(
        test_support::eventually(Duration::from_secs(5), || {
            let url = url.clone();
            async move { stats(&url).await.watchers.is_empty() }
        })
        .await,
        "the upstream watch was not released"
    );
}
