//! Unit tests of the metrics: client labels and their bounds, socket and poll usage.

use super::*;

fn metrics(clients: &[&str]) -> Metrics {
    let config = MetricsConfig {
        listen: String::new(),
        known_clients: clients.iter().map(|c| (*c).to_owned()).collect(),
    };
    let upstreams = Arc::new(Upstreams::new(&BTreeMap::new()).expect("no backends"));
    Metrics::new("bff-test", &config, upstreams, BTreeMap::new(), None, None)
}

#[test]
fn clients_are_bounded_to_the_known_ones() {
    let m = metrics(&["tv-app", "ios/2.0"]);
    m.count_request("/v1/poll", Some(b"tv-app/1.2.3"));
    m.count_request("/v1/poll", Some(b"tv-app"));
    m.count_request("/v2/x", Some(b"ios/2.0"));
    m.count_request("/v2/x", Some(b"ios/1.0"));
    m.count_request("/v2/x", Some(b"\xff\xfe"));
    m.count_request("/v1/x", None);
    m.count_request("/graphql", None);
    let text = m.render();
    for line in [
        r#"switchyard_requests_total{gateway="bff-test",version="v1",client="tv-app"} 2"#,
        r#"switchyard_requests_total{gateway="bff-test",version="v2",client="ios/2.0"} 1"#,
        r#"switchyard_requests_total{gateway="bff-test",version="v2",client="other"} 2"#,
        r#"switchyard_requests_total{gateway="bff-test",version="v1",client="none"} 1"#,
        r#"switchyard_requests_total{gateway="bff-test",version="other",client="none"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
}

#[test]
fn bad_client_names_are_refused() {
    let mut c = MetricsConfig {
        known_clients: vec!["ok-name/1.0".to_owned()],
        ..MetricsConfig::default()
    };
    assert!(c.validate().is_ok());
    c.known_clients = vec!["bad name".to_owned()];
    assert!(c.validate().is_err());
    c.known_clients = vec!["other".to_owned()];
    assert!(c.validate().is_err());
    c.known_clients.clear();
    c.listen = "nowhere".to_owned();
    assert!(c.validate().is_err());
}

fn line(text: &str, line: &str) {
    assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
}

#[test]
fn devices_are_labelled_by_model_and_firmware() {
    let m = metrics(&["tv-x1", "kiosk/2.0"]);
    let mut headers = HeaderMap::new();
    headers.insert(DEVICE_MODEL_HEADER, "tv-x1".parse().unwrap());
    headers.insert(DEVICE_FIRMWARE_HEADER, "3.1".parse().unwrap());
    let tv = m.usage("v1", &headers);
    let held = tv.held_poll();
    let mut kiosk = HeaderMap::new();
    kiosk.insert(DEVICE_MODEL_HEADER, "kiosk".parse().unwrap());
    kiosk.insert(DEVICE_FIRMWARE_HEADER, "2.0".parse().unwrap());
    let _k = m.usage("v2", &kiosk).held_poll();
    let mut old = HeaderMap::new();
    old.insert(DEVICE_MODEL_HEADER, "kiosk".parse().unwrap());
    let _o = m.usage("v2", &old).held_poll();
    let text = m.render();
    line(
        &text,
        r#"switchyard_held_polls{gateway="bff-test",version="v1",client="tv-x1"} 1"#,
    );
    line(
        &text,
        r#"switchyard_held_polls{gateway="bff-test",version="v2",client="kiosk/2.0"} 1"#,
    );
    line(
        &text,
        r#"switchyard_held_polls{gateway="bff-test",version="v2",client="other"} 1"#,
    );
    drop(held);
    line(
        &m.render(),
        r#"switchyard_held_polls{gateway="bff-test",version="v1",client="tv-x1"} 0"#,
    );
}

#[test]
fn a_socket_moves_to_the_client_its_handshake_names() {
    let m = metrics(&["web-app"]);
    let usage = m.count_request("/v1/graphql", None);
    let mut socket = usage.connection();
    let text = m.render();
    line(
        &text,
        r#"switchyard_connections{gateway="bff-test",version="v1",client="none"} 1"#,
    );
    line(
        &text,
        r#"switchyard_connections_opened_total{gateway="bff-test",version="v1",client="none"} 0"#,
    );
    socket.identify(Some("web-app/5.0"));
    socket.identify(Some("other-app/1"));
    let text = m.render();
    line(
        &text,
        r#"switchyard_connections{gateway="bff-test",version="v1",client="web-app"} 1"#,
    );
    line(
        &text,
        r#"switchyard_connections{gateway="bff-test",version="v1",client="none"} 0"#,
    );
    line(
        &text,
        r#"switchyard_connections_opened_total{gateway="bff-test",version="v1",client="web-app"} 1"#,
    );
    drop(socket);
    // One that never finished its handshake is counted as opened when it closes.
    drop(usage.connection());
    let text = m.render();
    line(
        &text,
        r#"switchyard_connections{gateway="bff-test",version="v1",client="web-app"} 0"#,
    );
    line(
        &text,
        r#"switchyard_connections_opened_total{gateway="bff-test",version="v1",client="none"} 1"#,
    );
}
