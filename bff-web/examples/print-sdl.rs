//! Prints the SDL of the served v1 schema, to update `schema/v1.graphql` after an additive change.

fn main() {
    print!("{}", bff_web::v1_sdl());
}
