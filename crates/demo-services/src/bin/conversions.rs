//! The conversions demo service on its own: thin — the shared server main (configuration from
//! `--config` and `SWITCHYARD_CONVERSIONS__*`, logs, signals) hands over to its `run`.

fn main() -> anyhow::Result<()> {
    switchyard_server::cli::main(switchyard_server::cli::with_broker(
        |config, broker: switchyard_core::bus::Broker, listener, shutdown| {
            demo_services::conversions::run(config, broker.bus(), listener, shutdown)
        },
    ))
}
