//! The edge's nginx configuration, `deploy/nginx`, checked: `nginx -t` accepts the real
//! `nginx.conf` (with the compose upstreams, docker DNS names, swapped for loopback addresses),
//! and its directives balance without stickiness, never replay a POST and upgrade sockets.
//!
//! nginx must be installed (`scripts/services` installs it): without it these tests FAIL.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;

use common::deploy::{GATEWAYS, deploy_dir, read};
use common::nginx::{NginxDir, nginx_binary, nginx_listens};

#[test]
fn nginx_t_accepts_the_real_configuration() {
    let fake = |n: u16| -> Vec<SocketAddr> {
        vec![
            SocketAddr::from(([127, 0, 0, 1], n)),
            SocketAddr::from(([127, 0, 0, 1], n + 1)),
        ]
    };
    let upstreams = HashMap::from([
        ("bff_web", fake(18080)),
        ("bff_mobile", fake(18081)),
        ("bff_device", fake(18082)),
    ]);
    let listens = nginx_listens();
    let dir = NginxDir::new(&upstreams, &listens);
    let out = Command::new(nginx_binary())
        .args(dir.args(""))
        .arg("-t")
        .output()
        .expect("run nginx -t");
    assert!(
        out.status.success(),
        "nginx -t rejected deploy/nginx/nginx.conf:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        dir.error_log()
    );
}

#[test]
fn nginx_configuration_balances_without_stickiness_and_upgrades_sockets() {
    let dir = deploy_dir().join("nginx");
    let mut all = String::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/nginx") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) == Some("conf") {
            // Directives only: comments may explain what is not used.
            for line in read(&path).lines() {
                all.push_str(line.split('#').next().unwrap_or(""));
                all.push('\n');
            }
        }
    }
    let directives: Vec<&str> = all
        .split([';', '{', '}'])
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    fn directives_named<'a>(directives: &[&'a str], name: &str) -> Vec<&'a str> {
        directives
            .iter()
            .copied()
            .filter(|d| d.split_whitespace().next() == Some(name))
            .collect()
    }
    let named = |name: &str| directives_named(&directives, name);
    for sticky in ["ip_hash", "hash", "sticky", "sticky_cookie_insert"] {
        assert!(named(sticky).is_empty(), "nginx must not use `{sticky}`");
    }
    assert!(
        named("proxy_http_version")
            .iter()
            .all(|d| d.ends_with("1.1"))
    );
    assert!(
        !named("proxy_http_version").is_empty(),
        "HTTP/1.1 to the gateways"
    );
    assert!(
        named("map")
            .iter()
            .any(|d| d.contains("$http_upgrade $connection_upgrade")),
        "Connection follows Upgrade"
    );
    let headers = named("proxy_set_header");
    assert!(headers.iter().any(|d| d.contains("Upgrade $http_upgrade")));
    assert!(
        headers
            .iter()
            .any(|d| d.contains("Connection $connection_upgrade"))
    );
    for d in named("proxy_next_upstream") {
        assert!(!d.contains("non_idempotent"), "POST is never replayed: {d}");
    }
    for g in &GATEWAYS {
        let block = all
            .split(&format!("upstream {} {{", g.upstream))
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .unwrap_or_else(|| panic!("no upstream {}", g.upstream));
        let servers = block
            .lines()
            .filter(|l| l.trim_start().starts_with("server "))
            .count();
        assert!(servers >= 2, "upstream {}: {servers} server(s)", g.upstream);
        assert!(
            block
                .lines()
                .filter(|l| l.trim_start().starts_with("server "))
                .all(|l| l.contains("max_fails=")),
            "upstream {}: passive health on every server",
            g.upstream
        );
    }
}
