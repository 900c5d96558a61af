//! The RabbitMQ variants of the deployment files, read as data: `deploy/compose.rabbitmq.yaml`
//! (over compose.yaml) and the kustomize overlay `deploy/k8s/rabbitmq/` put every gateway
//! instance and conversions on RabbitMQ Streams with the Redis state store, run a RabbitMQ with
//! its stream plugin, and their variables load with the binaries' own configuration types.

mod common;

use std::collections::HashMap;

use common::deploy::{GATEWAYS, deploy_dir, get, read};
use serde_yaml::Value as Yaml;
use switchyard_core::bus::BusKind;
use switchyard_server::config::Source;

/// Checks one process's bus variables (prefix `prefix`) and loads them over its container
/// configuration with its own type.
fn assert_rabbitmq_env(what: &str, prefix: &str, env: &HashMap<String, String>) {
    let var = |key: &str| {
        env.get(&format!("{prefix}__BUS__{key}"))
            .unwrap_or_else(|| panic!("{what}: no {prefix}__BUS__{key}"))
            .as_str()
    };
    assert_eq!(var("KIND"), "rabbitmq", "{what}");
    assert!(
        var("URL").starts_with("rabbitmq-stream://") && var("URL").contains("@rabbitmq:5552"),
        "{what}: {}",
        var("URL")
    );
    assert_eq!(var("STATE__KIND"), "redis", "{what}");
    assert_eq!(var("STATE__URL"), "redis://redis:6379", "{what}");
    let config = |name: &str| {
        let path = deploy_dir().join(format!("k8s/config/{name}.toml"));
        let vars: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| k.contains("__BUS__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Source::new(Some((path.clone(), read(&path))), vars)
    };
    let bus = match prefix {
        "SWITCHYARD_WEB" => config("bff-web")
            .load::<bff_web::Config>(prefix)
            .map(|c| c.bus),
        "SWITCHYARD_MOBILE" => config("bff-mobile")
            .load::<bff_mobile::Config>(prefix)
            .map(|c| c.bus),
        "SWITCHYARD_DEVICE" => config("bff-device")
            .load::<bff_device::Config>(prefix)
            .map(|c| c.bus),
        _ => config("conversions")
            .load::<demo_services::conversions::Config>(prefix)
            .map(|c| c.bus),
    }
    .unwrap_or_else(|e| panic!("{what}: the variables load: {e:#}"));
    assert_eq!(bus.kind, BusKind::Rabbitmq, "{what}");
    assert_eq!(
        bus.state.map(|s| s.kind).as_deref(),
        Some("redis"),
        "{what}"
    );
}

fn yaml(path: &str) -> Yaml {
    serde_yaml::from_str(&read(&deploy_dir().join(path))).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn string_map(v: Option<&Yaml>) -> HashMap<String, String> {
    v.and_then(Yaml::as_mapping)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
        .collect()
}

#[test]
fn compose_runs_every_gateway_on_rabbitmq_streams_with_the_redis_state_store() {
    let base = yaml("compose.yaml");
    let over = yaml("compose.rabbitmq.yaml");
    let services = get(&over, &["services"]).expect("services");
    let rabbitmq = services.get("rabbitmq").expect("a rabbitmq service");
    let mounts: Vec<&str> = get(rabbitmq, &["volumes"])
        .and_then(Yaml::as_sequence)
        .expect("volumes")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(
        mounts.contains(&"./rabbitmq/enabled_plugins:/etc/rabbitmq/enabled_plugins:ro"),
        "{mounts:?}"
    );
    assert!(read(&deploy_dir().join("rabbitmq/enabled_plugins")).contains("rabbitmq_stream"));
    // Every gateway instance of the base file, and conversions, is overridden.
    let base_services = get(&base, &["services"])
        .and_then(Yaml::as_mapping)
        .expect("base services");
    let mut overridden = 0;
    for (name, _) in base_services {
        let name = name.as_str().expect("a service name");
        let Some(g) = GATEWAYS
            .iter()
            .find(|g| name.starts_with(&format!("{}-", g.name)))
        else {
            continue;
        };
        let s = services
            .get(name)
            .unwrap_or_else(|| panic!("compose.rabbitmq.yaml overrides {name}"));
        assert_rabbitmq_env(name, g.env_prefix, &string_map(get(s, &["environment"])));
        assert!(get(s, &["depends_on", "rabbitmq"]).is_some(), "{name}");
        overridden += 1;
    }
    assert!(overridden >= 6, "{overridden} gateway instances");
    let conversions = services.get("conversions").expect("conversions");
    assert_rabbitmq_env(
        "conversions",
        "SWITCHYARD_CONVERSIONS",
        &string_map(get(conversions, &["environment"])),
    );
}

#[test]
fn the_k8s_overlay_runs_rabbitmq_and_patches_every_bus_user() {
    let kustomization = yaml("k8s/rabbitmq/kustomization.yaml");
    let resources: Vec<&str> = get(&kustomization, &["resources"])
        .and_then(Yaml::as_sequence)
        .expect("resources")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(resources, ["..", "rabbitmq.yaml"]);
    let docs: Vec<Yaml> =
        serde_yaml::Deserializer::from_str(&read(&deploy_dir().join("k8s/rabbitmq/rabbitmq.yaml")))
            .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
            .collect();
    let kinds: Vec<&str> = docs
        .iter()
        .filter_map(|d| get(d, &["kind"]).and_then(Yaml::as_str))
        .collect();
    assert_eq!(kinds, ["StatefulSet", "Service"]);
    let ports =
        serde_yaml::to_string(get(&docs[1], &["spec", "ports"]).expect("ports")).expect("ports");
    assert!(ports.contains("5552"), "{ports}");
    let patches = get(&kustomization, &["patches"])
        .and_then(Yaml::as_sequence)
        .expect("patches");
    let targets = GATEWAYS
        .iter()
        .map(|g| (g.name, g.env_prefix))
        .chain([("conversions", "SWITCHYARD_CONVERSIONS")]);
    for (name, prefix) in targets {
        let patch = patches
            .iter()
            .find(|p| get(p, &["target", "name"]).and_then(Yaml::as_str) == Some(name))
            .unwrap_or_else(|| panic!("a patch of {name}"));
        let ops: Yaml = serde_yaml::from_str(
            get(patch, &["patch"])
                .and_then(Yaml::as_str)
                .expect("patch"),
        )
        .expect("a JSON patch");
        let env: HashMap<String, String> = ops
            .as_sequence()
            .expect("operations")
            .iter()
            .filter_map(|op| {
                let v = get(op, &["value"])?;
                Some((
                    get(v, &["name"])?.as_str()?.to_owned(),
                    get(v, &["value"])?.as_str()?.to_owned(),
                ))
            })
            .collect();
        assert_rabbitmq_env(name, prefix, &env);
    }
}
