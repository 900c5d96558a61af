//! The shipped GraphQL schemas are contracts (DESIGN.md, invariant 8).
//!
//! Each `schema/vN.graphql` is what clients of version N were promised. The served schema of that
//! version must not break it (`bff_web::contract::breaking_changes`), and every additive change is
//! recorded in the file in the same commit, so that the file stays the baseline the next change is
//! checked against.

use std::path::{Path, PathBuf};

use bff_web::contract::breaking_changes;

/// The version files checked below; a shipped file missing here fails
/// `every_shipped_version_is_checked`.
const CHECKED: &[&str] = &["v1.graphql", "v2.graphql"];

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schema")
}

fn shipped(version_file: &str) -> String {
    let path = schema_dir().join(version_file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read shipped schema {}: {e}", path.display()))
}

/// THE CHECK FOR ONE SHIPPED VERSION — call it for each version in [`CHECKED`].
///
/// Fails when `served` breaks `schema/{version_file}`, and (only when nothing breaks) when the
/// file does not record an additive change.
#[track_caller]
fn check(version_file: &str, served: &str) {
    let version = version_file.trim_end_matches(".graphql");
    let shipped = shipped(version_file);
    let changes = breaking_changes(&shipped, served)
        .unwrap_or_else(|e| panic!("cannot compare with bff-web/schema/{version_file}: {e}"));
    assert!(
        changes.is_empty(),
        "the served {version} schema breaks the shipped bff-web/schema/{version_file}:\n  - {}\n\n\
         {version} is shipped and frozen: clients depend on it. Undo these changes and make them in \
         a new API version instead. Do NOT regenerate {version_file} to silence this test — that \
         would break every {version} client.",
        changes.join("\n  - ")
    );
    assert!(
        served.trim() == shipped.trim(),
        "the served {version} schema has additive (non-breaking) changes not recorded in \
         bff-web/schema/{version_file}. Record them in the same commit:\n  \
         cargo run -p bff-web --example print-sdl -- {version} > bff-web/schema/{version_file}\n\
         (descriptions count too; nothing here breaks {version} clients)"
    );
}

#[test]
fn served_v1_schema_keeps_the_shipped_contract() {
    check("v1.graphql", &bff_web::v1_sdl());
}

#[test]
fn served_v2_schema_keeps_the_shipped_contract() {
    check("v2.graphql", &bff_web::v2_sdl());
}

#[test]
fn v2_really_breaks_v1_which_is_why_it_is_a_new_version() {
    // Money became a structured type: v1 clients could not read v2 answers.
    let changes = breaking_changes(&shipped("v1.graphql"), &bff_web::v2_sdl()).expect("valid SDL");
    assert!(
        changes.iter().any(|c| c.contains("Quote.converted")),
        "{changes:?}"
    );
}

#[test]
fn every_shipped_version_is_checked() {
    let mut unchecked = Vec::new();
    for entry in std::fs::read_dir(schema_dir()).expect("bff-web/schema exists") {
        let name = entry.expect("readable entry").file_name();
        let name = name.to_string_lossy().into_owned();
        if name.ends_with(".graphql") && !CHECKED.contains(&name.as_str()) {
            unchecked.push(name);
        }
    }
    assert!(
        unchecked.is_empty(),
        "shipped schema files without a contract check: {unchecked:?}; add each to CHECKED and \
         a test calling check(\"vN.graphql\", &bff_web::vN_sdl()) in bff-web/tests/contract.rs"
    );
}

/// `sdl` without the field `field` of type `type_name`, nor its description: the edit a
/// developer makes when deleting or renaming a field.
fn without_field(sdl: &str, type_name: &str, field: &str) -> String {
    let mut lines: Vec<&str> = sdl.lines().collect();
    let opening = format!("type {type_name} {{");
    let type_at = lines
        .iter()
        .position(|l| l.trim() == opening)
        .unwrap_or_else(|| panic!("no `{opening}` in the SDL: pick another type for this test"));
    let at = (type_at..lines.len())
        .take_while(|&i| lines[i].trim() != "}")
        .find(|&i| {
            let line = lines[i].trim();
            line.starts_with(&format!("{field}:")) || line.starts_with(&format!("{field}("))
        })
        .unwrap_or_else(|| panic!("no field `{type_name}.{field}`: pick another for this test"));
    let mut start = at;
    if lines[start - 1].trim() == "\"\"\"" {
        // A block description ends just above: remove it from its opening `"""`.
        start -= 1;
        while lines[start - 1].trim() != "\"\"\"" {
            start -= 1;
        }
        start -= 1;
    }
    lines.drain(start..=at);
    lines.join("\n")
}

/// `sdl` with `from` replaced by `to` once; fails when `from` is not there.
fn edited(sdl: &str, from: &str, to: &str) -> String {
    assert!(
        sdl.contains(from),
        "no `{from}` in the SDL: pick another edit for this test"
    );
    sdl.replacen(from, to, 1)
}

#[test]
fn the_check_is_not_vacuous_against_the_real_schema() {
    let shipped = shipped("v1.graphql");
    let compare = |served: &str| breaking_changes(&shipped, served).expect("valid SDL");

    assert_eq!(
        compare(&without_field(&shipped, "Quote", "rate")),
        ["field `Quote.rate` was removed"]
    );
    assert_eq!(
        // (Query needs another field to stay valid SDL once `quote` is gone.)
        compare(&without_field(
            &edited(&shipped, "type Query {", "type Query {\n\tother: Int"),
            "Query",
            "quote"
        )),
        ["field `Query.quote` was removed"]
    );
    assert_eq!(
        compare(&edited(&shipped, "rate: String!", "rate: String")),
        ["field `Conversion.rate` changed type from `String!` to `String` (it may now be null)"]
    );
    assert_eq!(
        compare(&edited(
            &shipped,
            "quote(user: String!,",
            "quote(user: String!, region: String!,"
        )),
        ["new required argument `Query.quote(region:)` (`String!` without a default)"]
    );
    assert_eq!(
        compare(&edited(&shipped, "quote(user: String!,", "quote(")),
        ["argument `Query.quote(user:)` was removed"]
    );
}

#[test]
fn additions_to_the_real_schema_are_not_breaking() {
    let shipped = shipped("v1.graphql");
    let added = format!(
        "{}\ntype Extra {{ x: Int }}\n",
        edited(
            &shipped,
            "quote(user: String!,",
            "quote(note: String, user: String!,"
        )
    );
    assert_eq!(breaking_changes(&shipped, &added), Ok(Vec::new()));
}
