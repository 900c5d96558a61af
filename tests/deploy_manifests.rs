//! The deployment manifests under `deploy/`, read as data: the Kubernetes manifests give every
//! gateway a Deployment of at least two replicas with /readyz and /healthz probes, a Service and
//! a PodDisruptionBudget; the compose file runs at least two instances of each gateway behind
//! nginx; no file asks for sticky sessions; the container configurations load with the
//! binaries' own (strict) configuration types.

mod common;

use std::collections::HashMap;

use common::deploy::{
    GATEWAYS, SERVICES, assert_bus_env, container_config_drain_ms, deploy_dir, get, k8s_env,
    k8s_objects, read, str_at,
};
use serde_yaml::Value as Yaml;
use switchyard_server::config::Source;

#[test]
fn container_configurations_load_with_the_binaries_own_types() {
    for g in &GATEWAYS {
        container_config_drain_ms(g.name);
    }
    let dir = deploy_dir().join("k8s/config");
    let load = |name: &str| {
        let path = dir.join(format!("{name}.toml"));
        Source::new(Some((path.clone(), read(&path))), Vec::new())
    };
    let listens = [
        (
            "limits",
            load("limits")
                .load::<demo_services::limits::Config>("SWITCHYARD_LIMITS")
                .expect("limits.toml")
                .server
                .listen,
        ),
        (
            "exchange",
            load("exchange")
                .load::<demo_services::exchange::Config>("SWITCHYARD_EXCHANGE")
                .expect("exchange.toml")
                .server
                .listen,
        ),
        (
            "conversions",
            load("conversions")
                .load::<demo_services::conversions::Config>("SWITCHYARD_CONVERSIONS")
                .expect("conversions.toml")
                .server
                .listen,
        ),
        (
            "statements",
            load("statements")
                .load::<demo_services::statements::Config>("SWITCHYARD_STATEMENTS")
                .expect("statements.toml")
                .server
                .listen,
        ),
    ];
    // The gateways' container configurations (and `shipped_config`) reach them on these ports.
    for ((service, listen), (name, port)) in listens.into_iter().zip(SERVICES) {
        assert_eq!((service, listen.port()), (name, port));
    }
}

#[test]
fn k8s_runs_every_gateway_twice_with_probes_a_service_and_a_disruption_budget() {
    let objects = k8s_objects();
    let object = |kind: &str, name: &str| {
        objects
            .get(&(kind.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("no {kind}/{name} in deploy/k8s"))
    };
    for g in &GATEWAYS {
        let d = object("Deployment", g.name);
        let replicas = get(d, &["spec", "replicas"]).and_then(Yaml::as_u64);
        assert!(replicas >= Some(2), "{}: replicas {replicas:?}", g.name);
        let pod = get(d, &["spec", "template", "spec"]).expect("pod spec");
        let labels = get(d, &["spec", "template", "metadata", "labels"]).expect("pod labels");
        let container = get(pod, &["containers"])
            .and_then(|c| c.get(0))
            .expect("a container");
        assert_eq!(
            str_at(container, &["readinessProbe", "httpGet", "path"]),
            "/readyz"
        );
        assert_eq!(
            str_at(container, &["livenessProbe", "httpGet", "path"]),
            "/healthz"
        );
        let command: Vec<&str> = get(container, &["command"])
            .and_then(Yaml::as_sequence)
            .expect("a command")
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        assert_eq!(
            command.first(),
            Some(&g.name),
            "{}: runs its own binary",
            g.name
        );
        assert!(
            get(container, &["ports"])
                .and_then(Yaml::as_sequence)
                .is_some_and(|ps| ps
                    .iter()
                    .any(|p| p.get("containerPort").and_then(Yaml::as_u64) == Some(g.port.into()))),
            "{}: container port {}",
            g.name,
            g.port
        );
        assert_bus_env(g.name, g.env_prefix, &k8s_env(container));
        assert_eq!(
            get(pod, &["securityContext", "runAsNonRoot"]).and_then(Yaml::as_bool),
            Some(true),
            "{}: non-root",
            g.name
        );
        // The grace period covers the preStop sleep and the whole drain.
        let sleep_s: u64 = get(container, &["lifecycle", "preStop", "exec", "command"])
            .and_then(Yaml::as_sequence)
            .and_then(|c| c.get(1))
            .and_then(Yaml::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{}: a preStop `sleep N`", g.name));
        let grace = get(pod, &["terminationGracePeriodSeconds"])
            .and_then(Yaml::as_u64)
            .expect("terminationGracePeriodSeconds");
        let drain_s = container_config_drain_ms(g.name).div_ceil(1000);
        assert!(
            grace > sleep_s + drain_s,
            "{}: grace {grace} s must exceed preStop {sleep_s} s + drain {drain_s} s",
            g.name
        );

        let selects_pods = |selector: &Yaml| {
            selector
                .as_mapping()
                .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v)))
        };
        let svc = object("Service", g.name);
        assert!(
            selects_pods(get(svc, &["spec", "selector"]).expect("selector")),
            "Service {} selects the Deployment's pods",
            g.name
        );
        assert_ne!(
            get(svc, &["spec", "sessionAffinity"]).and_then(Yaml::as_str),
            Some("ClientIP"),
            "Service {}: no session affinity",
            g.name
        );
        let pdb = object("PodDisruptionBudget", g.name);
        assert!(
            selects_pods(get(pdb, &["spec", "selector", "matchLabels"]).expect("selector")),
            "PodDisruptionBudget {} selects the Deployment's pods",
            g.name
        );
        assert_eq!(
            get(pdb, &["spec", "minAvailable"]).and_then(Yaml::as_u64),
            Some(1),
            "{}",
            g.name
        );
    }
    let conversions = object("Deployment", "conversions");
    let container = get(conversions, &["spec", "template", "spec", "containers"])
        .and_then(|c| c.get(0))
        .expect("a container");
    assert_bus_env("conversions", "SWITCHYARD_CONVERSIONS", &k8s_env(container));
    assert!(object("Service", "redis").is_mapping());
    assert!(object("StatefulSet", "nats").is_mapping());

    for ((kind, name), o) in &objects {
        if kind != "Ingress" {
            continue;
        }
        let annotations = get(o, &["metadata", "annotations"])
            .and_then(Yaml::as_mapping)
            .into_iter()
            .flatten();
        for (key, _) in annotations {
            let key = key.as_str().unwrap_or_default();
            assert!(
                !["affinity", "session-cookie", "upstream-hash-by"]
                    .iter()
                    .any(|s| key.contains(s)),
                "Ingress {name}: {key} would make sessions sticky"
            );
        }
    }

    // kustomization.yaml lists every manifest, and its generated ConfigMap every config file.
    let kustomization: Yaml =
        serde_yaml::from_str(&read(&deploy_dir().join("k8s/kustomization.yaml"))).expect("YAML");
    let listed: Vec<&str> = get(&kustomization, &["resources"])
        .and_then(Yaml::as_sequence)
        .expect("resources")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    for entry in std::fs::read_dir(deploy_dir().join("k8s")).expect("deploy/k8s") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            assert!(
                listed.contains(&name.as_str()),
                "kustomization.yaml misses {name}"
            );
        }
    }
    for g in &GATEWAYS {
        let file = format!("config/{}.toml", g.name);
        let generated = get(&kustomization, &["configMapGenerator"])
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten()
            .filter_map(|generator| generator.get("files").and_then(Yaml::as_sequence))
            .flatten()
            .any(|f| f.as_str() == Some(file.as_str()));
        assert!(generated, "the ConfigMap holds {file}");
    }
}

#[test]
fn compose_runs_two_instances_of_each_gateway_behind_nginx() {
    let compose: Yaml =
        serde_yaml::from_str(&read(&deploy_dir().join("compose.yaml"))).expect("compose YAML");
    let services = get(&compose, &["services"])
        .and_then(Yaml::as_mapping)
        .expect("services");
    let upstreams = read(&deploy_dir().join("nginx/upstreams.conf"));
    for g in &GATEWAYS {
        let instances: Vec<(&str, &Yaml)> = services
            .iter()
            .filter_map(|(name, s)| Some((name.as_str()?, s)))
            .filter(|(_, s)| {
                get(s, &["command"])
                    .and_then(|c| c.get(0))
                    .and_then(Yaml::as_str)
                    == Some(g.name)
            })
            .collect();
        assert!(
            instances.len() >= 2,
            "{}: {} instance(s) in compose",
            g.name,
            instances.len()
        );
        for (name, s) in instances {
            let env: HashMap<String, String> = get(s, &["environment"])
                .and_then(Yaml::as_mapping)
                .expect("environment")
                .iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                .collect();
            assert_bus_env(name, g.env_prefix, &env);
            assert!(
                get(s, &["healthcheck", "test"]).is_some(),
                "{name}: a healthcheck"
            );
            assert!(
                upstreams.contains(&format!("server {name}:{} ", g.port)),
                "nginx's upstreams.conf balances {name}:{}",
                g.port
            );
        }
    }
    let nginx = services
        .get("nginx")
        .expect("an nginx service in front of the gateways");
    let mounts: Vec<&str> = get(nginx, &["volumes"])
        .and_then(Yaml::as_sequence)
        .expect("nginx volumes")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    for file in ["nginx.conf", "upstreams.conf", "edge-common.conf"] {
        assert!(
            mounts
                .iter()
                .any(|m| m.starts_with(&format!("./nginx/{file}:"))),
            "nginx mounts deploy/nginx/{file}"
        );
    }
    for bus in ["redis", "nats"] {
        assert!(services.get(bus).is_some(), "compose runs {bus}");
    }
    assert!(
        get(&compose, &["services", "nats", "command"])
            .and_then(Yaml::as_sequence)
            .is_some_and(|c| c.iter().any(|a| a.as_str() == Some("-js"))),
        "NATS runs with JetStream"
    );
}

/// The metric names a PromQL expression uses (`switchyard_…`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("switchyard_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The Grafana dashboard (deploy/grafana/, its k8s copy identical) parses, and every metric its
/// PromQL queries is in some gateway's `/metrics` output: scraped from the three gateways of a
/// running stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_only_metrics_the_gateways_export() {
    let text = read(&deploy_dir().join("grafana/switchyard-gateways.json"));
    assert_eq!(
        text,
        read(&deploy_dir().join("k8s/monitoring/switchyard-gateways.json")),
        "deploy/k8s/monitoring/switchyard-gateways.json is a copy of deploy/grafana's"
    );
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut used = std::collections::BTreeSet::new();
    let mut exprs = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("a PromQL expr");
            exprs += 1;
            used.extend(metric_names(expr));
        }
    }
    assert!(exprs >= 10, "{exprs} queries");

    let mut config = switchyard::Config::ephemeral();
    config.exchange.tick_interval_ms = 3_600_000;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
    };
    let addrs = [free(), free(), free()];
    config.web.metrics.listen = addrs[0].to_string();
    config.mobile.metrics.listen = addrs[1].to_string();
    config.device.metrics.listen = addrs[2].to_string();
    let stack = switchyard::Stack::start(config).await.expect("stack");
    let mut exported = std::collections::BTreeSet::new();
    for addr in addrs {
        // The listener is bound once the gateway serves, just after the stack started.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let body = loop {
            match reqwest::get(format!("http://{addr}/metrics")).await {
                Ok(answer) => break answer.text().await.expect("body"),
                Err(e) => assert!(std::time::Instant::now() < deadline, "{addr}: {e}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            exported.insert(name.to_owned());
        }
    }
    stack.stop().await.ok();
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which no gateway exports"
    );
}

/// Monitoring in both deployments: compose runs Prometheus on deploy/prometheus/ and Grafana
/// with the dashboard; Kubernetes runs both, with a scrape configuration `promtool` accepts,
/// headless Services finding every gateway and demo service pod, each with a `metrics` port.
#[test]
fn both_deployments_run_prometheus_and_grafana_on_every_metrics_port() {
    let compose: Yaml =
        serde_yaml::from_str(&read(&deploy_dir().join("compose.yaml"))).expect("compose YAML");
    let mounts = |service: &str| -> Vec<String> {
        get(&compose, &["services", service, "volumes"])
            .and_then(Yaml::as_sequence)
            .unwrap_or_else(|| panic!("compose runs {service} with volumes"))
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    assert!(
        mounts("prometheus")
            .iter()
            .any(|m| m.starts_with("./prometheus/prometheus.yml:"))
    );
    let grafana = mounts("grafana");
    for file in [
        "./grafana/switchyard-gateways.json:",
        "./k8s/monitoring/grafana-datasources.yaml:",
        "./k8s/monitoring/grafana-dashboards.yaml:",
    ] {
        assert!(
            grafana.iter().any(|m| m.starts_with(file)),
            "grafana mounts {file}"
        );
    }

    let check = std::process::Command::new("/usr/bin/promtool")
        .args(["check", "config"])
        .arg(deploy_dir().join("k8s/monitoring/prometheus.yml"))
        .output()
        .expect("promtool (Debian's prometheus package; run scripts/services)");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let objects = k8s_objects();
    for kind in ["Deployment", "Service"] {
        for name in ["prometheus", "grafana"] {
            assert!(
                objects.contains_key(&(kind.to_owned(), name.to_owned())),
                "no {kind}/{name} in deploy/k8s"
            );
        }
    }
    let scrape = read(&deploy_dir().join("k8s/monitoring/prometheus.yml"));
    for name in [
        "bff-web",
        "bff-mobile",
        "bff-device",
        "limits",
        "exchange",
        "conversions",
        "statements",
    ] {
        let headless = format!("{name}-metrics");
        assert!(scrape.contains(&format!("\"{headless}\"")), "{headless}");
        let svc = &objects[&("Service".to_owned(), headless.clone())];
        assert_eq!(str_at(svc, &["spec", "clusterIP"]), "None", "{headless}");
        let deployment = &objects[&("Deployment".to_owned(), name.to_owned())];
        let labels =
            get(deployment, &["spec", "template", "metadata", "labels"]).expect("pod labels");
        let selects = get(svc, &["spec", "selector"])
            .and_then(Yaml::as_mapping)
            .is_some_and(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
        assert!(selects, "{headless} selects {name}'s pods");
        let port = get(deployment, &["spec", "template", "spec", "containers"])
            .and_then(|c| c.get(0))
            .and_then(|c| get(c, &["ports"]))
            .and_then(Yaml::as_sequence)
            .is_some_and(|ps| {
                ps.iter().any(|p| {
                    p.get("name").and_then(Yaml::as_str) == Some("metrics")
                        && p.get("containerPort").and_then(Yaml::as_u64) == Some(9464)
                })
            });
        assert!(port, "{name}: a `metrics` container port 9464");
        let config = read(&deploy_dir().join(format!("k8s/config/{name}.toml")));
        assert!(
            config.contains("[metrics]\n") && config.contains("listen = \"0.0.0.0:9464\""),
            "{name}'s container configuration serves /metrics on 9464"
        );
    }
}
