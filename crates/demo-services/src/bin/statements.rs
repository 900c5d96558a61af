//! The statements demo service on its own: thin — the shared server main (configuration from
//! `--config` and `SWITCHYARD_STATEMENTS__*`, logs, signals) hands over to its `run`.

fn main() -> anyhow::Result<()> {
    switchyard_server::cli::main(demo_services::statements::run)
}
