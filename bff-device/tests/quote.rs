//! `GET /v1/quote` never gives a user's limit to a device (security fix, issue 9 item 1): a
//! device is not a user, and the endpoint takes no user credential. The answer keeps the rate and
//! the converted amount, `l` and `w` are null with `e` `{"b":"limits","k":"not_a_user"}`, and
//! the limits backend is never called. Against the real gateway with scripted backends that
//! count their calls.

mod common;

use serde_json::json;
use switchyard_core::upstream::BackendConfig;
use test_support::QuoteBackends;

#[tokio::test]
async fn a_device_quote_has_no_limit_and_limits_is_not_called() {
    let backends = QuoteBackends::start().await;
    let mut config = common::config();
    config.backends = backends.configs(BackendConfig::new);
    let gw = common::start(config, 16).await;
    // With or without a device key, and whatever bearer token comes along: no limit.
    for headers in [
        vec![],
        vec![("x-device-key", common::TV1_KEY)],
        vec![("authorization", "Bearer whatever")],
    ] {
        let mut req = gw
            .http
            .get(gw.url("/v1/quote?user=bob&from=EUR&to=USD&amount=100"));
        for (k, v) in &headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.expect("answer");
        assert_eq!(r.status(), 200, "{headers:?}");
        let body: serde_json::Value = r.json().await.expect("JSON");
        assert_eq!(
            body,
            json!({"p": "EUR/USD", "a": "100", "r": "1.5", "c": "150.0", "l": null, "w": null,
                   "e": [{"b": "limits", "k": "not_a_user"}]}),
            "{headers:?}"
        );
    }
    assert_eq!(backends.exchange.gets(), 3);
    assert_eq!(
        backends.limits.received(),
        0,
        "no backend call for a user's account"
    );
}
