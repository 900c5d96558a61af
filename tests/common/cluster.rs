//! The cluster fixtures, against the REAL brokers of this machine: Redis (127.0.0.1:6379),
//! NATS JetStream (127.0.0.1:4222) and RabbitMQ Streams (127.0.0.1:5552, its state store the
//! Redis). Two in-process instances of a gateway (A and B), each on
//! its OWN [`Broker`] (its own connections to the broker), plus a third bus client standing for
//! a backend that publishes; a fresh bus `prefix` per test, so runs never see each other's keys,
//! streams or subjects. A broker that cannot be reached FAILS the tests (`scripts/services`
//! starts both).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mobile_client::{Client as MobileClient, Config as MobileConfig};

use mobile_proto::{Encoding, Position};
use serde_json::{Value, json};
use switchyard_core::bus::{Broker, Bus};
use switchyard_core::bus::{BusConfig, BusKind};
use switchyard_core::event::Topic;
use switchyard_server::server::CancellationToken;
use test_support::device::{DeviceApi, of_kind};
use test_support::mobile::Client as RawMobile;
use tokio::net::TcpListener;

use super::{PATIENCE, Running};

/// The HS256 secret of the test gateways.
pub const SECRET: &str = "a-cluster-test-secret-of-32-bytes!!";

/// bff-device's admin token, the test device and its key.
pub const ADMIN: &str = "cluster-admin-token-0123456789";
pub const DEVICE: &str = "tv-1";
pub const DEVICE_KEY: &str = "tv-1-key-0123456789";

/// Every broker bus.
pub const BROKERS: [BusKind; 3] = [BusKind::Redis, BusKind::Nats, BusKind::Rabbitmq];

/// A bus configuration of `kind` with a prefix no other run uses.
pub fn bus_config(kind: BusKind) -> BusConfig {
    let mut config = BusConfig::of(kind);
    config.prefix = test_support::unique_name("cluster");
    config
}

/// A new bus client (its own broker connections) for `config`, once the broker answers.
/// Panics — the test fails — when it does not answer in time.
pub async fn bus_client(config: &BusConfig) -> Arc<dyn Bus> {
    broker_client(config).await.bus()
}

/// A new [`Broker`] (its own connections, as another process would have) for `config`, once
/// the broker answers. Panics — the test fails — when it does not answer in time.
pub async fn broker_client(config: &BusConfig) -> Broker {
    let broker = Broker::connect(config);
    let bus = broker.bus();
    let reachable = tokio::time::timeout(PATIENCE, async {
        loop {
            if bus.check().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        reachable.is_ok(),
        "{:?} broker at {} unreachable: run scripts/services",
        config.kind,
        config.broker_url()
    );
    broker
}

/// A token of the test gateways' secret for `user`.
pub fn token(user: &str) -> String {
    bff_web::auth::hs256_token(SECRET, user, Duration::from_secs(600))
}

/// Starts `run` as the instance `name` on a broker client of its own for `config`.
async fn instance<F, Fut>(config: &BusConfig, name: &'static str, run: F) -> Running
where
    F: FnOnce(Broker, TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let broker = broker_client(config).await;
    Running::start(name, move |l, t| run(broker, l, t)).await
}

/// bff-mobile's configuration on the bus of `config` (its own bus section, describing the broker
/// its instance is handed), signing tokens with [`SECRET`].
pub fn mobile_config(config: &BusConfig) -> bff_mobile::Config {
    let mut c = bff_mobile::Config {
        bus: config.clone(),
        ..Default::default()
    };
    c.auth.hs256_secret = SECRET.to_owned();
    c.server.drain_timeout_ms = 2_000;
    c
}

/// A bff-mobile instance on the bus of `config`, through a broker client of its own.
pub async fn mobile_instance(config: &BusConfig) -> Running {
    mobile_instance_with(config, mobile_config(config)).await
}

/// A bff-mobile instance of configuration `c` on the bus of `config`, through a broker client
/// of its own.
pub async fn mobile_instance_with(config: &BusConfig, c: bff_mobile::Config) -> Running {
    instance(config, "bff-mobile", move |broker, l, t| {
        bff_mobile::run(c, broker, l, t)
    })
    .await
}

/// bff-web's configuration on the bus of `config`, signing tokens with [`SECRET`].
pub fn web_config(config: &BusConfig) -> bff_web::Config {
    let mut c = bff_web::Config {
        bus: config.clone(),
        ..Default::default()
    };
    c.auth.hs256_secret = SECRET.to_owned();
    c.server.drain_timeout_ms = 2_000;
    c
}

/// A bff-web instance on the bus of `config`, through a broker client of its own.
pub async fn web_instance(config: &BusConfig) -> Running {
    web_instance_with(config, web_config(config)).await
}

/// A bff-web instance of configuration `c` on the bus of `config`, through a broker client of
/// its own.
pub async fn web_instance_with(config: &BusConfig, c: bff_web::Config) -> Running {
    instance(config, "bff-web", move |broker, l, t| {
        bff_web::run(c, broker, l, t)
    })
    .await
}

/// bff-device's configuration on the bus of `config`, knowing [`DEVICE`] (admin token
/// [`ADMIN`]), without sources.
pub fn device_config(config: &BusConfig) -> bff_device::Config {
    let mut c = bff_device::Config {
        bus: config.clone(),
        ..Default::default()
    };
    c.sources.clear();
    c.server.drain_timeout_ms = 2_000;
    c.admin.token = ADMIN.to_owned();
    c.devices.insert(
        DEVICE.to_owned(),
        bff_device::DeviceConfig {
            key: DEVICE_KEY.to_owned(),
            rates: Vec::new(),
            settings: [("volume".to_owned(), json!(7))].into_iter().collect(),
            channels: Vec::new(),
        },
    );
    c
}

/// A bff-device instance on the bus of `config`, through a broker client of its own, knowing
/// [`DEVICE`].
pub async fn device_instance(config: &BusConfig) -> Running {
    let c = device_config(config);
    instance(config, "bff-device", move |broker, l, t| {
        bff_device::run(c, broker, l, t)
    })
    .await
}

/// The exchange demo service, ticking every 20 ms.
pub async fn start_exchange() -> Running {
    let config = demo_services::exchange::Config {
        tick_interval_ms: 20,
        ..Default::default()
    };
    Running::start("exchange", move |l, t| {
        demo_services::exchange::run(config, l, t)
    })
    .await
}

/// A mobile client (the `mobile-client` crate) of the instance at `addr`, signed in as `user`.
pub async fn mobile_client(addr: SocketAddr, user: &str) -> MobileClient {
    let config = MobileConfig::new(format!("ws://{addr}/v1/ws"), token(user));
    tokio::time::timeout(PATIENCE, MobileClient::connect(config))
        .await
        .expect("connect in time")
        .expect("connects")
}

/// The event a backend publishes on channel `conversions.{user}`, with id `id`.
pub fn conversion_payload(user: &str, id: &str) -> Vec<u8> {
    let event = json!({
        "type": demo_api::CONVERSION_COMPLETED,
        "conversion": {
            "id": id, "user": user, "from": "EUR", "to": "USD",
            "amount": "10.00", "rate": "1.1", "converted": "11.00",
            "at": "2026-01-01T00:00:00Z",
        },
    });
    // Checked against the real type, so the test publishes exactly what conversions does.
    let typed: demo_api::ConversionEvent =
        serde_json::from_value(event).expect("a valid ConversionEvent");
    serde_json::to_vec(&typed).expect("encodes")
}

/// Publishes a conversion event for `user` through `bus` (as the conversions service would).
pub async fn publish_conversion(bus: &Arc<dyn Bus>, user: &str, id: &str) -> Position {
    let topic = Topic::new(&demo_api::conversions_topic(
        &demo_api::UserId::parse(user).expect("a valid user id"),
    ))
    .expect("a valid topic");
    let event = tokio::time::timeout(
        PATIENCE,
        bus.publish(&topic, conversion_payload(user, id).into()),
    )
    .await
    .expect("publish in time")
    .expect("published");
    Position {
        epoch: event.position().epoch,
        offset: event.position().offset,
    }
}

/// Opens a JSON mobile socket on `addr` (pings passed over) and signs in as `user`.
pub async fn signed_in(addr: SocketAddr, user: &str) -> RawMobile {
    let url = format!("ws://{addr}/v1/ws");
    let mut c = RawMobile::connect_within(&url, &[Encoding::Json.subprotocol()], PATIENCE)
        .await
        .skipping_pings();
    c.sign_in(token(user), user).await;
    c
}

/// bff-device's API on the instance at `addr`, through `http`.
pub fn device_api(http: &reqwest::Client, addr: SocketAddr) -> DeviceApi {
    DeviceApi::with_client(format!("http://{addr}"), ADMIN, PATIENCE * 2, http.clone())
}

/// A client for the device API (its timeout covers the longest held poll).
pub fn http() -> reqwest::Client {
    test_support::http::client_with_timeout(PATIENCE * 2)
}

/// Sends command `id` through the admin API of the instance at `addr`.
pub async fn send_command(http: &reqwest::Client, addr: SocketAddr, id: &str) {
    let r = device_api(http, addr)
        .admin(
            reqwest::Method::POST,
            &format!("/admin/devices/{DEVICE}/commands"),
            json!({"op": "reboot", "args": {"n": 1}, "id": id}),
        )
        .await;
    let body: Value = r.json();
    assert_eq!(r.status, 202, "{body}");
}

/// Polls the instance at `addr`: the answer's next cursor and the ids of its commands.
pub async fn poll(
    http: &reqwest::Client,
    addr: SocketAddr,
    cursor: Option<&str>,
    wait_s: u32,
) -> (String, Vec<String>) {
    let r = device_api(http, addr)
        .poll(DEVICE, DEVICE_KEY, cursor, wait_s)
        .await;
    let body: Value = r.json();
    assert_eq!(r.status, 200, "{body}");
    assert!(body.get("rs").is_none(), "no reset expected: {body}");
    let commands = of_kind(&body, "c")
        .iter()
        .map(|e| e["i"].as_str().expect("command id").to_owned())
        .collect();
    (body["n"].as_str().expect("cursor").to_owned(), commands)
}
