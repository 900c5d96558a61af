//! The breaking-change checker's own tests: one per kind of change, each asserting the
//! sentence it reports (or that it reports nothing).

use super::*;

fn changes(shipped: &str, served: &str) -> Vec<String> {
    breaking_changes(shipped, served).expect("valid SDL")
}

/// Asserts exactly one change is reported and it contains every fragment.
#[track_caller]
fn assert_one(shipped: &str, served: &str, fragments: &[&str]) {
    let found = changes(shipped, served);
    assert_eq!(found.len(), 1, "expected one change, got {found:#?}");
    for fragment in fragments {
        assert!(
            found[0].contains(fragment),
            "`{}` does not mention `{fragment}`",
            found[0]
        );
    }
}

#[track_caller]
fn assert_safe(shipped: &str, served: &str) {
    let found = changes(shipped, served);
    assert!(
        found.is_empty(),
        "expected no breaking change, got {found:#?}"
    );
}

const BASE: &str = r#"
        type Query { quote(user: String!, amount: String): Quote! }
        type Quote { rate: String!, note: String, tags: [String!]! }
    "#;

#[test]
fn identical_schemas_have_no_changes() {
    assert_safe(BASE, BASE);
}

#[test]
fn unparsable_sdl_is_an_error_naming_the_document() {
    let err = breaking_changes("type Query {", BASE).unwrap_err();
    assert!(err.starts_with("shipped SDL:"), "{err}");
    let err = breaking_changes(BASE, "type {}").unwrap_err();
    assert!(err.starts_with("served SDL:"), "{err}");
}

#[test]
fn additive_changes_are_safe() {
    let served = r#"
            type Query {
                quote(user: String!, amount: String, region: String, limit: Int! = 10): Quote!
                rates: [Quote!]!
            }
            type Quote { rate: String!, note: String, tags: [String!]!, added: Int }
            type Extra { x: Int }
            enum Color { RED }
            input NewInput { a: Int! }
        "#;
    assert_safe(BASE, served);
}

#[test]
fn removed_type() {
    let shipped = "type Query { a: Int } type Old { x: Int }";
    assert_one(
        shipped,
        "type Query { a: Int }",
        &["type `Old` was removed"],
    );
}

#[test]
fn kind_change() {
    let shipped = "type Query { a: Thing } type Thing { x: Int }";
    let served = "type Query { a: Thing } interface Thing { x: Int }";
    assert_one(
        shipped,
        served,
        &["type `Thing` changed from an object type to an interface"],
    );
    let shipped = "type Query { a: Level } enum Level { LOW }";
    let served = "type Query { a: Level } scalar Level";
    assert_one(shipped, served, &["`Level`", "an enum", "a scalar"]);
}

#[test]
fn removed_or_renamed_field() {
    let served = r#"
            type Query { quote(user: String!, amount: String): Quote! }
            type Quote { exchangeRate: String!, note: String, tags: [String!]! }
        "#;
    assert_one(BASE, served, &["field `Quote.rate` was removed"]);
    let shipped = "type Query { a: Int } interface Node { id: ID! }";
    let served = "type Query { a: Int } interface Node { key: ID! }";
    assert_one(shipped, served, &["field `Node.id` was removed"]);
    let shipped = "type Query { a(f: Filter): Int } input Filter { min: Int }";
    let served = "type Query { a(f: Filter): Int } input Filter { max: Int }";
    assert_one(shipped, served, &["input field `Filter.min` was removed"]);
}

#[test]
fn output_field_types() {
    let base = "type Query { a: String! b: String c: [Int!]! }";
    // Non-null → nullable: breaking.
    assert_one(
        base,
        "type Query { a: String b: String c: [Int!]! }",
        &[
            "field `Query.a`",
            "`String!` to `String`",
            "may now be null",
        ],
    );
    // Nullable → non-null: safe.
    assert_safe(base, "type Query { a: String! b: String! c: [Int!]! }");
    // Named type change: breaking.
    assert_one(
        base,
        "type Query { a: String! b: Int c: [Int!]! }",
        &["field `Query.b`", "`String` to `Int`"],
    );
    // List wrapping added or removed: breaking.
    assert_one(
        base,
        "type Query { a: [String!]! b: String c: [Int!]! }",
        &["field `Query.a`", "`String!` to `[String!]!`"],
    );
    assert_one(
        base,
        "type Query { a: String! b: String c: Int! }",
        &["field `Query.c`", "`[Int!]!` to `Int!`"],
    );
    // Items may now be null: breaking; items now non-null: safe.
    assert_one(
        base,
        "type Query { a: String! b: String c: [Int]! }",
        &["field `Query.c`", "`[Int!]!` to `[Int]!`"],
    );
    assert_safe("type Query { c: [Int] }", "type Query { c: [Int!]! }");
}

#[test]
fn input_field_types() {
    let shipped = "type Query { a(f: F): Int } input F { x: Int, y: Int!, z: [Int] }";
    // Nullable → non-null: breaking.
    assert_one(
        shipped,
        "type Query { a(f: F): Int } input F { x: Int!, y: Int!, z: [Int] }",
        &["input field `F.x`", "`Int` to `Int!`", "no longer accepted"],
    );
    // Non-null → nullable: safe.
    assert_safe(
        shipped,
        "type Query { a(f: F): Int } input F { x: Int, y: Int, z: [Int] }",
    );
    // Named type change and list wrapping: breaking.
    assert_one(
        shipped,
        "type Query { a(f: F): Int } input F { x: String, y: Int!, z: [Int] }",
        &["input field `F.x`", "`Int` to `String`"],
    );
    assert_one(
        shipped,
        "type Query { a(f: F): Int } input F { x: Int, y: Int!, z: Int }",
        &["input field `F.z`", "`[Int]` to `Int`"],
    );
    // Items now non-null: breaking for inputs.
    assert_one(
        shipped,
        "type Query { a(f: F): Int } input F { x: Int, y: Int!, z: [Int!] }",
        &["input field `F.z`", "`[Int]` to `[Int!]`"],
    );
}

#[test]
fn argument_types() {
    let shipped = "type Query { a(x: Int, y: Int!): Int }";
    assert_one(
        shipped,
        "type Query { a(x: Int!, y: Int!): Int }",
        &["argument `Query.a(x:)`", "`Int` to `Int!`"],
    );
    assert_safe(shipped, "type Query { a(x: Int, y: Int): Int }");
    assert_one(
        shipped,
        "type Query { a(x: ID, y: Int!): Int }",
        &["argument `Query.a(x:)`", "`Int` to `ID`"],
    );
    assert_one(
        shipped,
        "type Query { a(x: [Int], y: Int!): Int }",
        &["argument `Query.a(x:)`", "`Int` to `[Int]`"],
    );
}

#[test]
fn removed_argument() {
    assert_one(
        BASE,
        r#"
                type Query { quote(user: String!): Quote! }
                type Quote { rate: String!, note: String, tags: [String!]! }
            "#,
        &["argument `Query.quote(amount:)` was removed"],
    );
}

#[test]
fn new_arguments() {
    let shipped = "type Query { a(x: Int): Int }";
    assert_one(
        shipped,
        "type Query { a(x: Int, y: Int!): Int }",
        &["new required argument `Query.a(y:)`", "`Int!`"],
    );
    // Optional new arguments — nullable, or non-null with a default — are safe.
    assert_safe(
        shipped,
        "type Query { a(x: Int, y: Int, z: Int! = 3): Int }",
    );
    // A new field may have required arguments: no client uses it yet.
    assert_safe(shipped, "type Query { a(x: Int): Int b(y: Int!): Int }");
}

#[test]
fn argument_losing_its_default() {
    assert_one(
        "type Query { a(x: Int! = 1): Int }",
        "type Query { a(x: Int!): Int }",
        &["argument `Query.a(x:)`", "lost its default"],
    );
    assert_safe(
        "type Query { a(x: Int! = 1): Int }",
        "type Query { a(x: Int! = 2): Int }",
    );
}

#[test]
fn new_input_fields() {
    let shipped = "type Query { a(f: F): Int } input F { x: Int }";
    assert_one(
        shipped,
        "type Query { a(f: F): Int } input F { x: Int, y: String! }",
        &["new required input field `F.y`"],
    );
    assert_safe(
        shipped,
        "type Query { a(f: F): Int } input F { x: Int, y: String, z: Int! = 0 }",
    );
    // A new input type may have required fields.
    assert_safe(
        shipped,
        "type Query { a(f: F): Int b(g: G): Int } input F { x: Int } input G { y: Int! }",
    );
}

#[test]
fn enum_values() {
    let shipped = "type Query { a: Level } enum Level { LOW HIGH }";
    assert_one(
        shipped,
        "type Query { a: Level } enum Level { LOW }",
        &["enum value `Level.HIGH` was removed"],
    );
    assert_safe(
        shipped,
        "type Query { a: Level } enum Level { LOW HIGH MEDIUM }",
    );
}

#[test]
fn union_members() {
    let shipped = "type Query { s: R } union R = A | B type A { x: Int } type B { y: Int }";
    assert_one(
        shipped,
        "type Query { s: R } union R = A type A { x: Int } type B { y: Int }",
        &["member `B` was removed from union `R`"],
    );
    assert_safe(
        shipped,
        "type Query { s: R } union R = A | B | C type A { x: Int } type B { y: Int } type C { z: Int }",
    );
}

#[test]
fn implemented_interfaces() {
    let shipped =
        "type Query { a: A } interface Node { id: ID! } type A implements Node { id: ID! }";
    assert_one(
        shipped,
        "type Query { a: A } interface Node { id: ID! } type A { id: ID! }",
        &["type `A` no longer implements interface `Node`"],
    );
}

#[test]
fn root_types() {
    let shipped = "type Query { a: Int } type Mutation { b: Int } type Subscription { c: Int }";
    let found = changes(shipped, "type Query { a: Int }");
    assert!(
        found
            .iter()
            .any(|c| c.contains("mutation root type `Mutation` was removed")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|c| c.contains("subscription root type `Subscription` was removed")),
        "{found:#?}"
    );
    // A root may be removed from the schema while its type stays: still breaking.
    let shipped =
        "schema { query: Query mutation: Mutation } type Query { a: Int } type Mutation { b: Int }";
    let served = "schema { query: Query } type Query { a: Int } type Mutation { b: Int }";
    assert_one(
        shipped,
        served,
        &["mutation root type `Mutation` was removed"],
    );
    // Renaming a root is reported (and its old type, gone, too).
    let served =
        "schema { query: Root mutation: Mutation } type Root { a: Int } type Mutation { b: Int }";
    let found = changes(shipped, served);
    assert!(
        found.contains(&"the query root type changed from `Query` to `Root`".to_owned()),
        "{found:#?}"
    );
    // An explicit schema block naming the default types equals the implicit one.
    assert_safe(
        "type Query { a: Int }",
        "schema { query: Query } type Query { a: Int }",
    );
    // A new root is additive.
    assert_safe(
        "type Query { a: Int }",
        "type Query { a: Int } type Mutation { b: Int }",
    );
}

#[test]
fn directives() {
    let shipped = "type Query { a: Int } directive @cached(ttl: Int) on FIELD | QUERY";
    assert_one(
        shipped,
        "type Query { a: Int }",
        &["directive `@cached` was removed"],
    );
    assert_one(
        shipped,
        "type Query { a: Int } directive @cached(ttl: Int) on FIELD",
        &["directive `@cached` can no longer be used on Query"],
    );
    assert_one(
        shipped,
        "type Query { a: Int } directive @cached(ttl: Int, scope: String!) on FIELD | QUERY",
        &["new required argument `@cached(scope:)`"],
    );
    assert_safe(
        shipped,
        "type Query { a: Int } directive @cached(ttl: Int, scope: String) on FIELD | QUERY | MUTATION",
    );
}

#[test]
fn type_extensions_are_merged() {
    let shipped = "type Query { a: Int } extend type Query { b: Int }";
    assert_safe(shipped, "type Query { a: Int b: Int }");
    assert_one(
        shipped,
        "type Query { a: Int }",
        &["field `Query.b` was removed"],
    );
}

#[test]
fn descriptions_and_deprecations_do_not_matter() {
    let shipped = r#"type Query { "old words" a: Int }"#;
    assert_safe(
        shipped,
        r#"type Query { "new words" a: Int @deprecated(reason: "use b") b: Int }"#,
    );
}

#[test]
fn every_change_is_reported_sorted() {
    let served = r#"
            type Query { quote(user: String): Quote }
            type Quote { note: String!, tags: [String] }
        "#;
    let found = changes(BASE, served);
    assert_eq!(
        found,
        vec![
            "argument `Query.quote(amount:)` was removed".to_owned(),
            "field `Query.quote` changed type from `Quote!` to `Quote` (it may now be null)"
                .to_owned(),
            "field `Quote.rate` was removed".to_owned(),
            "field `Quote.tags` changed type from `[String!]!` to `[String]`".to_owned(),
        ],
    );
}
