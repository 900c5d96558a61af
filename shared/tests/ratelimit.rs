//! The rate limiter on the real brokers: two limiters (two instances) on one Redis or NATS share
//! one budget; with the broker unreachable the limiter fails open to its local, in-memory budget
//! (and counts the fallbacks).

use std::time::Duration;

use switchyard_core::bus::{Broker, BusConfig, BusKind};
use switchyard_core::ratelimit::{Key, RateLimitConfig, RateLimiter, Rule, Scope};

fn bus(kind: BusKind) -> BusConfig {
    BusConfig {
        prefix: test_support::unique_name("t-rl"),
        ..BusConfig::of(kind)
    }
}

async fn shared_budget(kind: BusKind) {
    let config = RateLimitConfig::default();
    let b = bus(kind);
    let one = RateLimiter::new("gw", &config, &Broker::connect(&b));
    let two = RateLimiter::new("gw", &config, &Broker::connect(&b));
    let key = Key::user(Scope::Request, "alice");
    let rule = Rule::per_second(10, 10);
    let mut allowed = 0;
    let mut refusal = None;
    for n in 0..20 {
        match if n % 2 == 0 { &one } else { &two }.check(&key, rule).await {
            Ok(()) => allowed += 1,
            Err(r) => {
                refusal = Some(r);
                break;
            }
        }
    }
    assert!((10..=12).contains(&allowed), "{allowed} allowed");
    let r = refusal.expect("refused");
    assert!(r.0 <= Duration::from_millis(100) && r.secs() == 1, "{r:?}");
    assert_eq!(one.fallbacks() + two.fallbacks(), 0, "the broker answered");
    // Another key, another gateway: budgets apart.
    assert!(
        one.check(&Key::user(Scope::Request, "bob"), rule)
            .await
            .is_ok()
    );
    let other_gw = RateLimiter::new("other", &config, &Broker::connect(&b));
    assert!(other_gw.check(&key, rule).await.is_ok());
}

#[tokio::test]
async fn two_limiters_on_redis_share_one_budget() {
    shared_budget(BusKind::Redis).await;
}

#[tokio::test]
async fn two_limiters_on_nats_share_one_budget() {
    shared_budget(BusKind::Nats).await;
}

#[tokio::test]
async fn an_unreachable_broker_fails_open_to_the_local_budget() {
    for (kind, url) in [
        (BusKind::Redis, "redis://127.0.0.1:1"),
        (BusKind::Nats, "nats://127.0.0.1:1"),
    ] {
        let b = BusConfig {
            url: url.into(),
            connect_timeout_ms: 200,
            operation_timeout_ms: 200,
            ..bus(kind)
        };
        let limiter = RateLimiter::new("gw", &RateLimitConfig::default(), &Broker::connect(&b));
        let key = Key::ip(Scope::Request, "10.1.2.3".parse().unwrap());
        let rule = Rule::per_minute(3, 3);
        for _ in 0..3 {
            assert!(limiter.check(&key, rule).await.is_ok());
        }
        assert!(limiter.check(&key, rule).await.is_err(), "{kind:?}");
        assert!(limiter.fallbacks() >= 4, "{kind:?}");
    }
}
