//! Unit tests of `ratelimit`: GCRA pacing, keys, the in-memory store.

use super::*;

#[test]
fn gcra_allows_the_burst_then_paces() {
    let m = MemoryRates::new(100);
    let (i, t) = Rule::per_second(10, 10).gcra();
    for n in 0..10 {
        assert_eq!(m.step("k", i, t), None, "request {n}");
    }
    let wait = m.step("k", i, t).expect("the 11th is refused");
    assert!(wait <= Duration::from_millis(100), "{wait:?}");
    assert_eq!(m.step("other", i, t), None, "keys are apart");
}

#[test]
fn memory_is_bounded_under_rotating_keys() {
    let m = MemoryRates::new(64);
    let (i, t) = Rule::per_second(1, 1).gcra();
    for n in 0..10_000 {
        m.step(&format!("ip-{n}"), i, t);
    }
    assert!(m.len() <= 64, "{} keys", m.len());
}

#[test]
fn keys_are_bounded_and_normalised() {
    let long = "x".repeat(10_000);
    assert!(Key::user(Scope::Request, &long).as_str().len() < 64);
    let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
    assert_eq!(
        Key::ip(Scope::Request, mapped),
        Key::ip(Scope::Request, "10.0.0.1".parse().unwrap())
    );
}

#[test]
fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
    let proxy: IpAddr = "10.0.0.9".parse().unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "x-forwarded-for",
        "6.6.6.6, 203.0.113.7, 10.0.0.9".parse().unwrap(),
    );
    let peer = |ip: IpAddr| Some(SocketAddr::new(ip, 1234));
    let broker = Broker::memory(16);
    let plain = RateLimiter::new("gw", &RateLimitConfig::default(), &broker);
    assert_eq!(plain.client_ip_from(peer(proxy), &headers), Some(proxy));
    let config = RateLimitConfig {
        trusted_proxies: vec![proxy],
        ..RateLimitConfig::default()
    };
    let behind = RateLimiter::new("gw", &config, &broker);
    // The right-most untrusted hop; what the client wrote to its left is ignored.
    assert_eq!(
        behind.client_ip_from(peer(proxy), &headers),
        Some("203.0.113.7".parse().unwrap())
    );
    // From anyone else the header is ignored.
    let other: IpAddr = "198.51.100.1".parse().unwrap();
    assert_eq!(behind.client_ip_from(peer(other), &headers), Some(other));
    let mut junk = http::HeaderMap::new();
    junk.insert("x-forwarded-for", "not-an-ip".parse().unwrap());
    assert_eq!(behind.client_ip_from(peer(proxy), &junk), Some(proxy));
    assert_eq!(behind.client_ip_from(None, &headers), None);
}

#[test]
fn retry_after_rounds_up() {
    assert_eq!(RetryAfter(Duration::from_millis(1)).secs(), 1);
    assert_eq!(RetryAfter(Duration::from_millis(1001)).secs(), 2);
    assert_eq!(RetryAfter(Duration::from_micros(1)).millis(), 1);
}
