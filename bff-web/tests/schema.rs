//! The shipped v1 schema is a contract: the served SDL must match `schema/v1.graphql`.
//!
//! Until the breaking-change checker lands (with /v2), any difference fails: an additive change
//! updates the file in the same commit (`cargo run -p bff-web --example print-sdl`), a breaking one
//! goes to a new version instead.

#[test]
fn served_v1_schema_matches_the_committed_sdl() {
    let committed = include_str!("../schema/v1.graphql");
    let served = bff_web::v1_sdl();
    assert_eq!(
        served.trim(),
        committed.trim(),
        "the served v1 schema differs from bff-web/schema/v1.graphql; \
         v1 is shipped: only additive changes, recorded in that file"
    );
}
