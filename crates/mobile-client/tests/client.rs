//! The client against a real bff-mobile gateway on a loopback port over a memory bus:
//! subscribe and receive, resume across a gateway restart (exactly the missed events, in order,
//! then live ones), a gap when history ran out during the outage, calls and a call cut off by
//! the connection dropping, pings answered, a refused token, close — in both encodings.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mobile_client::{CallError, Client, Config, Encoding, Error, Position, Subscription, Update};
use serde_json::json;
use switchyard_core::bus::{Broker, Bus};
use switchyard_core::event::Topic;
use switchyard_core::upstream::BackendConfig;
use switchyard_server::server::CancellationToken;
use test_support::{Scripted, TestServer};

const SECRET: &str = "a-test-secret-that-is-32-bytes-long!";
const WAIT: Duration = Duration::from_secs(5);

/// A running gateway.
struct Gateway {
    server: TestServer,
    app: Arc<bff_mobile::App>,
    bus: Arc<dyn Bus>,
    shutdown: CancellationToken,
}

/// HS256 auth, no upstream source, a short drain (bye window 300 ms).
fn gateway_config() -> bff_mobile::Config {
    let mut c = bff_mobile::Config::default();
    c.auth.hs256_secret = SECRET.to_owned();
    c.sources.clear();
    c.server.drain_timeout_ms = 400;
    c
}

/// Starts a gateway on `broker`, on `addr` if given (retrying while the port is still taken).
async fn start(config: &bff_mobile::Config, broker: &Broker, addr: Option<SocketAddr>) -> Gateway {
    let bus = broker.bus();
    let shutdown = CancellationToken::new();
    let app = bff_mobile::app(config, broker, shutdown.clone()).expect("app builds");
    let addr = addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let started = tokio::time::Instant::now();
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) if started.elapsed() < WAIT => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot bind {addr}: {e}"),
        }
    };
    let server = test_support::serve_on(listener, app.router.clone());
    Gateway {
        server,
        app: Arc::new(app),
        bus,
        shutdown,
    }
}

impl Gateway {
    fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.server.addr)
    }

    /// Stops listening and drains: every socket gets `bye`, then 1001; waits until all are gone.
    async fn kill(&self) {
        self.server.stop();
        self.shutdown.cancel();
        let app = self.app.clone();
        assert!(
            test_support::eventually(WAIT, || {
                let app = app.clone();
                async move { app.open_sockets() == 0 }
            })
            .await,
            "the gateway's sockets did not close"
        );
    }

    /// Publishes a conversion (JSON of `demo_api::ConversionEvent`) for `user` on the bus.
    async fn publish(&self, user: &str, id: &str) -> Position {
        // The topic of the user's catalog channel `conversions.{user}`.
        let topic = Topic::new(&format!("ch:conversions.{user}")).unwrap();
        let payload = json!({
            "type": "conversion.completed",
            "conversion": {
                "id": id, "user": user, "from": "EUR", "to": "USD", "amount": "10.00",
                "rate": "1.0842", "converted": "10.84", "at": "2026-01-01T00:00:00Z"
            }
        });
        let ev = self
            .bus
            .publish(&topic, Bytes::from(payload.to_string()))
            .await
            .expect("publish");
        Position {
            epoch: ev.epoch,
            offset: ev.offset,
        }
    }
}

fn token(user: &str) -> String {
    token_signed(user, SECRET)
}

fn token_signed(user: &str, secret: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"sub": user, "iat": now, "exp": now + 3600});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A client of `user` with fast reconnects.
fn client_config(gw: &Gateway, enc: Encoding, user: &str) -> Config {
    let mut c = Config::new(gw.url(), token(user))
        .with_encoding(enc)
        .with_backoff(20, 200);
    c.connect_timeout_ms = 2_000;
    c
}

/// The next update within [`WAIT`].
async fn next(sub: &mut Subscription) -> Update {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("an update in time")
        .expect("the subscription goes on")
}

/// The next update, which must be the event of conversion `id`; its position.
async fn event(sub: &mut Subscription, id: &str) -> Position {
    match next(sub).await {
        Update::Event {
            topic,
            position,
            data,
        } => {
            assert_eq!(topic, "conversions");
            assert_eq!(data["id"], id, "{data}");
            position
        }
        other => panic!("expected the event of {id}, got {other:?}"),
    }
}

/// Nothing arrives for `wait`.
async fn quiet(sub: &mut Subscription, wait: Duration) {
    if let Ok(update) = tokio::time::timeout(wait, sub.next()).await {
        panic!("expected silence, got {update:?}");
    }
}

#[tokio::test]
async fn subscribes_and_receives_a_published_event_in_both_encodings() {
    let gw = start(&gateway_config(), &Broker::memory(100), None).await;
    for enc in Encoding::ALL {
        let client = Client::connect(client_config(&gw, enc, "alice"))
            .await
            .expect("connects");
        let mut sub = client.subscribe("conversions").await.expect("subscribes");
        assert_eq!(sub.topic(), "conversions");
        let published = gw.publish("alice", &format!("a-{enc}")).await;
        assert_eq!(event(&mut sub, &format!("a-{enc}")).await, published);
        // Another user's conversions never arrive.
        gw.publish("bob", "b-1").await;
        quiet(&mut sub, Duration::from_millis(150)).await;
        assert_eq!(client.connections(), 1);
        client.close().await;
    }
}

#[tokio::test]
async fn resumes_after_a_gateway_restart_with_exactly_the_missed_events_in_both_encodings() {
    let config = gateway_config();
    let broker = Broker::memory(100);
    let mut gw = start(&config, &broker, None).await;
    for enc in Encoding::ALL {
        let client = Client::connect(client_config(&gw, enc, "carol"))
            .await
            .expect("connects");
        let mut sub = client.subscribe("conversions").await.expect("subscribes");
        let first = gw.publish("carol", &format!("{enc}-live-0")).await;
        assert_eq!(event(&mut sub, &format!("{enc}-live-0")).await, first);

        // Cut the connection: the gateway drains and stops; K events are published meanwhile.
        gw.kill().await;
        const K: u64 = 7;
        let mut missed = Vec::new();
        for i in 0..K {
            missed.push(gw.publish("carol", &format!("{enc}-missed-{i}")).await);
        }
        // A new gateway on the same address and the same bus: the client reconnects by itself.
        let addr = gw.server.addr;
        gw = start(&config, &broker, Some(addr)).await;
        for (i, position) in missed.iter().enumerate() {
            assert_eq!(
                event(&mut sub, &format!("{enc}-missed-{i}")).await,
                *position
            );
        }
        assert_eq!(missed.last().unwrap().offset, first.offset + K);
        // Then live events, and nothing twice.
        let live = gw.publish("carol", &format!("{enc}-live-1")).await;
        assert_eq!(event(&mut sub, &format!("{enc}-live-1")).await, live);
        quiet(&mut sub, Duration::from_millis(200)).await;
        assert!(client.connections() >= 2);
        assert_eq!(client.error(), None);
        client.close().await;
    }
}

#[tokio::test]
async fn history_lost_during_the_outage_is_a_gap_then_delivery_goes_on_in_both_encodings() {
    let config = gateway_config();
    // The bus keeps only 2 events per topic.
    let broker = Broker::memory(2);
    let mut gw = start(&config, &broker, None).await;
    for enc in Encoding::ALL {
        let client = Client::connect(client_config(&gw, enc, "dave"))
            .await
            .expect("connects");
        let mut sub = client.subscribe("conversions").await.expect("subscribes");
        let before = gw.publish("dave", &format!("{enc}-before")).await;
        assert_eq!(event(&mut sub, &format!("{enc}-before")).await, before);

        gw.kill().await;
        let mut published = Vec::new();
        for i in 0..5 {
            published.push(gw.publish("dave", &format!("{enc}-lost-{i}")).await);
        }
        gw = start(&config, &broker, Some(gw.server.addr)).await;

        let Update::Gap { topic, position } = next(&mut sub).await else {
            panic!("expected a gap first");
        };
        assert_eq!(topic, "conversions");
        assert!(position.offset > before.offset, "{position:?}");
        // Then every event after the gap's position that history still has, in order.
        let after: Vec<_> = published
            .iter()
            .filter(|p| p.offset > position.offset)
            .collect();
        assert!(!after.is_empty());
        for p in after {
            let i = published.iter().position(|q| q == p).unwrap();
            assert_eq!(event(&mut sub, &format!("{enc}-lost-{i}")).await, *p);
        }
        let live = gw.publish("dave", &format!("{enc}-live")).await;
        assert_eq!(event(&mut sub, &format!("{enc}-live")).await, live);
        quiet(&mut sub, Duration::from_millis(150)).await;
        client.close().await;
    }
}

#[tokio::test]
async fn a_refused_token_fails_connect_without_retrying_in_both_encodings() {
    let gw = start(&gateway_config(), &Broker::memory(10), None).await;
    for enc in Encoding::ALL {
        let mut config = client_config(&gw, enc, "eve");
        config.token = token_signed("eve", "another-secret-that-is-32-bytes-long");
        let err = Client::connect(config).await.expect_err("refused");
        assert!(
            matches!(err, Error::Unauthenticated { .. }),
            "unexpected error {err:?}"
        );
        assert!(err.is_fatal());
        assert!(err.to_string().contains("4401"), "{err}");
    }
    // Nothing keeps trying behind the scenes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gw.app.open_sockets(), 0);
}

#[tokio::test]
async fn an_unreachable_gateway_fails_connect() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = Client::connect(Config::new(format!("ws://{addr}/v1/ws"), token("x")))
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn calls_get_their_answers_and_errors_in_both_encodings() {
    let gw = start(&gateway_config(), &Broker::memory(10), None).await;
    for enc in Encoding::ALL {
        let client = Client::connect(client_config(&gw, enc, "fay"))
            .await
            .expect("connects");
        let bad = client.call("quote", json!({"from": "EUR"})).await;
        assert!(
            matches!(&bad, Err(CallError::Server { code, .. }) if code == "invalid_args"),
            "{bad:?}"
        );
        let unknown = client.call("teleport", json!({})).await;
        assert!(
            matches!(&unknown, Err(CallError::Server { code, .. }) if code == "unknown_op"),
            "{unknown:?}"
        );
        assert_eq!(
            client.call("quote", json!([1, 2])).await,
            Err(CallError::InvalidArgs)
        );
        client.close().await;
        assert_eq!(
            client.call("quote", json!({})).await,
            Err(CallError::ClientClosed)
        );
    }
}

#[tokio::test]
async fn a_call_in_flight_when_the_connection_drops_fails_and_is_not_retried() {
    let exchange = Scripted::new();
    exchange.reply(
        Duration::from_secs(3),
        200,
        r#"{"pair":"EUR/USD","rate":"1.0842","seq":7}"#,
    );
    let backend = exchange.serve().await;
    let mut config = gateway_config();
    config.operations.deadline_ms = 5_000;
    for name in ["exchange", "limits"] {
        config
            .backends
            .insert(name.to_owned(), BackendConfig::new(backend.url()));
    }
    let gw = start(&config, &Broker::memory(10), None).await;
    let client = Client::connect(client_config(&gw, Encoding::Cbor, "gus"))
        .await
        .expect("connects");
    let call = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .call(
                    "quote",
                    json!({"from": "EUR", "to": "USD", "amount": "10.00"}),
                )
                .await
        })
    };
    assert!(
        test_support::eventually(WAIT, || {
            let exchange = exchange.clone();
            async move { exchange.received() > 0 }
        })
        .await
    );
    gw.kill().await;
    let result = tokio::time::timeout(WAIT, call).await.unwrap().unwrap();
    assert_eq!(result, Err(CallError::ConnectionLost));
    // Not resent: the backend saw the one request (per backend called) only.
    let seen = exchange.received();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(exchange.received(), seen);
}

#[tokio::test]
async fn pings_are_answered_so_the_connection_stays() {
    let mut config = gateway_config();
    config.websocket.heartbeat_ms = 50;
    let gw = start(&config, &Broker::memory(10), None).await;
    let client = Client::connect(client_config(&gw, Encoding::Json, "hal"))
        .await
        .expect("connects");
    let mut sub = client.subscribe("conversions").await.expect("subscribes");
    // Well over 2 x hb without any traffic but pings: the server keeps the connection.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let published = gw.publish("hal", "h-1").await;
    assert_eq!(event(&mut sub, "h-1").await, published);
    assert_eq!(client.connections(), 1);
}

#[tokio::test]
async fn close_ends_subscriptions_and_does_not_reconnect() {
    let gw = start(&gateway_config(), &Broker::memory(10), None).await;
    let client = Client::connect(client_config(&gw, Encoding::Cbor, "ivy"))
        .await
        .expect("connects");
    let mut sub = client.subscribe("conversions").await.expect("subscribes");
    assert!(matches!(
        client.subscribe("conversions").await,
        Err(Error::AlreadySubscribed(_))
    ));
    client.close().await;
    assert_eq!(tokio::time::timeout(WAIT, sub.next()).await.unwrap(), None);
    assert!(
        test_support::eventually(WAIT, || {
            let app = gw.app.clone();
            async move { app.open_sockets() == 0 }
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gw.app.open_sockets(), 0);
    assert_eq!(client.connections(), 1);
    assert_eq!(client.error(), None);
}

#[tokio::test]
async fn a_token_refused_on_reconnect_stops_the_client_with_the_error() {
    let config = gateway_config();
    let broker = Broker::memory(10);
    let gw = start(&config, &broker, None).await;
    let client = Client::connect(client_config(&gw, Encoding::Cbor, "jo"))
        .await
        .expect("connects");
    let mut sub = client.subscribe("conversions").await.expect("subscribes");
    gw.kill().await;
    // The new gateway no longer accepts the token: 4401 is fatal, no reconnect loop.
    let mut rotated = config.clone();
    rotated.auth.hs256_secret = "another-secret-that-is-32-bytes-long".to_owned();
    let gw = start(&rotated, &broker, Some(gw.server.addr)).await;
    assert_eq!(tokio::time::timeout(WAIT, sub.next()).await.unwrap(), None);
    assert!(
        matches!(client.error(), Some(Error::Unauthenticated { .. })),
        "{:?}",
        client.error()
    );
    assert_eq!(
        client.call("quote", json!({})).await,
        Err(CallError::ClientClosed)
    );
    assert!(matches!(
        client.subscribe("conversions").await,
        Err(Error::Unauthenticated { .. })
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gw.app.open_sockets(), 0);
    assert_eq!(client.connections(), 1);
}

#[tokio::test]
async fn a_refused_subscription_is_an_error_and_the_connection_stays() {
    let gw = start(&gateway_config(), &Broker::memory(10), None).await;
    let client = Client::connect(client_config(&gw, Encoding::Json, "kim"))
        .await
        .expect("connects");
    let refused = client.subscribe("rates:EUR/XYZ").await;
    assert!(
        matches!(&refused, Err(Error::Refused { code, .. }) if code == "unknown_topic"),
        "{refused:?}"
    );
    let mut sub = client.subscribe("conversions").await.expect("subscribes");
    let published = gw.publish("kim", "k-1").await;
    assert_eq!(event(&mut sub, "k-1").await, published);
    // Unsubscribing ends the stream.
    client.unsubscribe("conversions").await.unwrap();
    assert_eq!(tokio::time::timeout(WAIT, sub.next()).await.unwrap(), None);
    assert_eq!(client.connections(), 1);
}

/// An HS256 token for `user` expiring `ttl_s` seconds from now.
fn token_for(user: &str, ttl_s: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user, "exp": now + ttl_s}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn reauthenticate_keeps_the_connection_and_its_subscriptions_past_the_first_exp() {
    let mut config = gateway_config();
    config.auth.leeway_s = 0;
    let gw = start(&config, &Broker::memory(100), None).await;
    let mut cfg = client_config(&gw, Encoding::Cbor, "dana");
    cfg.token = token_for("dana", 2);
    let client = Client::connect(cfg).await.expect("connects");
    let mut sub = client.subscribe("conversions").await.expect("subscribes");
    client
        .reauthenticate(token_for("dana", 3600))
        .await
        .expect("re-authenticated");
    // Past the first token's expiry (2 s): the same connection still delivers.
    quiet(&mut sub, Duration::from_secs(3)).await;
    let published = gw.publish("dana", "after-exp").await;
    assert_eq!(event(&mut sub, "after-exp").await, published);
    assert_eq!(client.connections(), 1, "no reconnect was needed");
    assert_eq!(client.error(), None);
    client.close().await;
}

#[tokio::test]
async fn reauthenticating_as_another_user_stops_the_client_with_4403() {
    let gw = start(&gateway_config(), &Broker::memory(100), None).await;
    let client = Client::connect(client_config(&gw, Encoding::Cbor, "fred"))
        .await
        .expect("connects");
    let err = client
        .reauthenticate(token_for("gina", 3600))
        .await
        .expect_err("refused");
    assert_eq!(
        err,
        Error::Closed {
            code: 4403,
            reason: "re-authentication as another user: open a new connection".into()
        }
    );
    assert!(err.is_fatal());
}
