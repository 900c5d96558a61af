//! The bff-web binary: thin — the shared server main (arguments, configuration, logs, signals,
//! the bus of `[bus]`) hands over to the gateway's `run`.

fn main() -> anyhow::Result<()> {
    switchyard_server::cli::main(switchyard_server::cli::with_broker(bff_web::run))
}
