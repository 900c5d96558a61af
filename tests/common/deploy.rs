//! The deployment files under `deploy/` as data: the gateways as the files name them, the
//! shipped container configurations loaded with the binaries' own types, and the Kubernetes
//! manifests read as YAML documents.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use serde_yaml::Value as Yaml;
use switchyard::Stack;
use switchyard_server::config::Source;

/// One gateway as the deployment files name it.
pub struct Gateway {
    /// Binary, compose service prefix, Kubernetes Deployment/Service/PDB name.
    pub name: &'static str,
    /// nginx upstream block.
    pub upstream: &'static str,
    /// Port the gateway and its nginx server block listen on.
    pub port: u16,
    /// Environment prefix of its configuration.
    pub env_prefix: &'static str,
}

pub const GATEWAYS: [Gateway; 3] = [
    Gateway {
        name: "bff-web",
        upstream: "bff_web",
        port: 8080,
        env_prefix: bff_web::ENV_PREFIX,
    },
    Gateway {
        name: "bff-mobile",
        upstream: "bff_mobile",
        port: 8081,
        env_prefix: bff_mobile::ENV_PREFIX,
    },
    Gateway {
        name: "bff-device",
        upstream: "bff_device",
        port: 8082,
        env_prefix: bff_device::ENV_PREFIX,
    },
];

pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .join("deploy")
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The demo services the container configurations reach by DNS name, and their ports.
pub const SERVICES: [(&str, u16); 4] = [
    ("limits", 9101),
    ("exchange", 9102),
    ("conversions", 9103),
    ("statements", 9104),
];

/// A gateway's shipped container configuration (`deploy/k8s/config/{gateway}.toml`, what compose
/// and Kubernetes run), loaded with its own type. Only the services' addresses change: their DNS
/// names (`http://limits:9101`, `ws://exchange:9102/v1/ticks`, …) become the stack's loopback
/// addresses, and the metrics listener (`0.0.0.0:9464`) is turned off. Backends, sources and limits are the file's, so a table missing from the file is
/// missing here too.
pub fn shipped_config<C: serde::de::DeserializeOwned + serde::Serialize + Default>(
    stack: &Stack,
    gateway: &str,
    env_prefix: &str,
) -> C {
    let path = deploy_dir()
        .join("k8s/config")
        .join(format!("{gateway}.toml"));
    let mut text = read(&path);
    for (service, port) in SERVICES {
        text = text.replace(
            &format!("://{service}:{port}"),
            &format!("://{}", stack.addr(service)),
        );
        assert!(
            !text.contains(&format!("://{service}:")),
            "{}: {service} on a port other than {port}",
            path.display()
        );
    }
    // Each container has the metrics port 9464 to itself; instances in one test process do not,
    // and these tests do not read metrics (tests/metrics.rs does): no metrics listener.
    let text = text.replace("listen = \"0.0.0.0:9464\"", "listen = \"\"");
    Source::new(Some((path.clone(), text)), Vec::new())
        .load(env_prefix)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of every YAML file in deploy/k8s, by (kind, name).
pub fn k8s_objects() -> HashMap<(String, String), Yaml> {
    let mut objects = HashMap::new();
    let dir = deploy_dir().join("k8s");
    for entry in std::fs::read_dir(&dir).expect("deploy/k8s exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml")
            || path.file_name().is_some_and(|n| n == "kustomization.yaml")
        {
            continue;
        }
        for doc in serde_yaml::Deserializer::from_str(&read(&path)) {
            let doc = Yaml::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
            if doc.is_null() {
                continue;
            }
            let kind = str_at(&doc, &["kind"]).to_owned();
            let name = str_at(&doc, &["metadata", "name"]).to_owned();
            assert!(
                get(&doc, &["metadata", "namespace"]).is_none(),
                "{kind}/{name}: the manifests are namespace-agnostic"
            );
            let prev = objects.insert((kind.clone(), name.clone()), doc);
            assert!(prev.is_none(), "{kind}/{name} is defined twice");
        }
    }
    objects
}

pub fn get<'a>(v: &'a Yaml, path: &[&str]) -> Option<&'a Yaml> {
    path.iter().try_fold(v, |v, key| v.get(*key))
}

pub fn str_at<'a>(v: &'a Yaml, path: &[&str]) -> &'a str {
    get(v, path)
        .and_then(Yaml::as_str)
        .unwrap_or_else(|| panic!("no string at {}", path.join(".")))
}

/// The drain timeout (ms) of a gateway's container configuration, loaded with its own type.
pub fn container_config_drain_ms(gateway: &str) -> u64 {
    let path = deploy_dir()
        .join("k8s/config")
        .join(format!("{gateway}.toml"));
    let source = Source::new(Some((path.clone(), read(&path))), Vec::new());
    let server = match gateway {
        "bff-web" => source
            .load::<bff_web::Config>(bff_web::ENV_PREFIX)
            .map(|c| c.server),
        "bff-mobile" => source
            .load::<bff_mobile::Config>(bff_mobile::ENV_PREFIX)
            .map(|c| c.server),
        "bff-device" => source
            .load::<bff_device::Config>(bff_device::ENV_PREFIX)
            .map(|c| c.server),
        other => panic!("unknown gateway {other}"),
    }
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let port = GATEWAYS.iter().find(|g| g.name == gateway).map(|g| g.port);
    assert_eq!(
        server.listen,
        SocketAddr::from(([0, 0, 0, 0], port.expect("known gateway"))),
        "{gateway} listens on every interface, on its port"
    );
    server.drain_timeout_ms
}

/// The bus variables of a container's env list (k8s `- {name, value}` entries).
pub fn k8s_env(container: &Yaml) -> HashMap<String, String> {
    get(container, &["env"])
        .and_then(Yaml::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e.get("name")?.as_str()?.to_owned(),
                e.get("value")?.as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// Asserts `KIND`/`URL` bus variables name Redis or NATS consistently.
pub fn assert_bus_env(what: &str, prefix: &str, env: &HashMap<String, String>) {
    let kind = env
        .get(&format!("{prefix}__BUS__KIND"))
        .unwrap_or_else(|| panic!("{what}: no {prefix}__BUS__KIND"));
    let url = env
        .get(&format!("{prefix}__BUS__URL"))
        .unwrap_or_else(|| panic!("{what}: no {prefix}__BUS__URL"));
    let resolved = |s: &str| {
        // compose's ${VAR:-default}: the default is what runs unless overridden.
        s.strip_prefix("${")
            .and_then(|s| s.split_once(":-"))
            .map_or(s.to_owned(), |(_, d)| d.trim_end_matches('}').to_owned())
    };
    let (kind, url) = (resolved(kind), resolved(url));
    assert!(
        (kind == "redis" && url.starts_with("redis://"))
            || (kind == "nats" && url.starts_with("nats://")),
        "{what}: bus kind {kind} with url {url}"
    );
}
