//! Prints the SDL of a served schema version, to record an additive change:
//! `cargo run -p bff-web --example print-sdl -- v1 > bff-web/schema/v1.graphql` (or `v2`).

fn main() {
    let version = std::env::args().nth(1).unwrap_or_else(|| "v1".into());
    match version.as_str() {
        "v1" => print!("{}", bff_web::v1_sdl()),
        "v2" => print!("{}", bff_web::v2_sdl()),
        other => {
            eprintln!("unknown version `{other}`: v1 or v2");
            std::process::exit(2);
        }
    }
}
