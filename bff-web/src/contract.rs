//! Breaking-change checks between a shipped GraphQL schema and the one served now.
//!
//! A published API version is a contract (DESIGN.md, invariant 8): a client written against the
//! shipped SDL (`schema/v1.graphql`, …) must keep working against what the gateway serves.
//! [`breaking_changes`] compares the two documents and names every change that can break such a
//! client: something it may select, pass or spread on is gone, a value it reads may now be null, or
//! an input it may send (or omit) is now refused. Additive changes — new types, fields, optional
//! arguments, enum values, union members — are not reported.
//!
//! This is a structural comparison of type-system definitions only. It does not validate either
//! schema, flag "dangerous" changes (a new enum value a client may not handle, a changed default),
//! or look at descriptions and deprecations: removing a deprecated field still breaks the version.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use async_graphql::parser::parse_schema;
use async_graphql::parser::types::{
    BaseType, InputValueDefinition, InterfaceType, ObjectType, ServiceDocument, Type, TypeKind,
    TypeSystemDefinition,
};

/// Every change from `shipped_sdl` to `served_sdl` that can break a client of the shipped schema,
/// one sentence each naming the type, field or argument, sorted. Empty when the served schema is
/// compatible. Fails, naming which document, when either is not valid SDL.
pub fn breaking_changes(shipped_sdl: &str, served_sdl: &str) -> Result<Vec<String>, String> {
    let shipped = Schema::parse(shipped_sdl).map_err(|e| format!("shipped SDL: {e}"))?;
    let served = Schema::parse(served_sdl).map_err(|e| format!("served SDL: {e}"))?;
    let mut changes = Vec::new();
    compare_roots(&shipped, &served, &mut changes);
    for (name, old) in &shipped.types {
        match served.types.get(name) {
            None => changes.push(format!("type `{name}` was removed")),
            Some(new) if new.kind != old.kind => changes.push(format!(
                "type `{name}` changed from {} to {}",
                old.kind, new.kind
            )),
            Some(new) => compare_type(name, old, new, &mut changes),
        }
    }
    for (name, old) in &shipped.directives {
        match served.directives.get(name) {
            None => changes.push(format!("directive `@{name}` was removed")),
            Some(new) => {
                for location in old.locations.difference(&new.locations) {
                    changes.push(format!(
                        "directive `@{name}` can no longer be used on {location}"
                    ));
                }
                compare_arguments(&format!("@{name}"), &old.args, &new.args, &mut changes);
            }
        }
    }
    changes.sort();
    changes.dedup();
    Ok(changes)
}

/// The kind of a named type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Scalar,
    Object,
    Interface,
    Union,
    Enum,
    InputObject,
}

impl Kind {
    fn of(kind: &TypeKind) -> Self {
        match kind {
            TypeKind::Scalar => Self::Scalar,
            TypeKind::Object(_) => Self::Object,
            TypeKind::Interface(_) => Self::Interface,
            TypeKind::Union(_) => Self::Union,
            TypeKind::Enum(_) => Self::Enum,
            TypeKind::InputObject(_) => Self::InputObject,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Scalar => "a scalar",
            Self::Object => "an object type",
            Self::Interface => "an interface",
            Self::Union => "a union",
            Self::Enum => "an enum",
            Self::InputObject => "an input object",
        })
    }
}

/// An argument or input field: its type and whether it has a default.
#[derive(Debug)]
struct Input {
    ty: Type,
    has_default: bool,
}

impl Input {
    fn from_definition(def: &InputValueDefinition) -> (String, Self) {
        (
            def.name.node.to_string(),
            Self {
                ty: def.ty.node.clone(),
                has_default: def.default_value.is_some(),
            },
        )
    }

    /// Whether a client may leave it out.
    fn is_required(&self) -> bool {
        !self.ty.nullable && !self.has_default
    }
}

/// A field of an object or interface.
#[derive(Debug)]
struct Field {
    ty: Type,
    args: BTreeMap<String, Input>,
}

/// A named type, reduced to what a client can depend on. Type extensions are merged in.
#[derive(Debug)]
struct NamedType {
    kind: Kind,
    /// Object and interface fields.
    fields: BTreeMap<String, Field>,
    /// Input object fields.
    input_fields: BTreeMap<String, Input>,
    /// Interfaces an object or interface implements.
    implements: BTreeSet<String>,
    /// Union members.
    members: BTreeSet<String>,
    /// Enum values.
    values: BTreeSet<String>,
}

/// A directive definition.
#[derive(Debug)]
struct Directive {
    args: BTreeMap<String, Input>,
    locations: BTreeSet<String>,
}

/// A schema document, indexed by name.
#[derive(Debug)]
struct Schema {
    types: BTreeMap<String, NamedType>,
    directives: BTreeMap<String, Directive>,
    /// Root operation type names by operation (`query`, `mutation`, `subscription`).
    roots: BTreeMap<&'static str, String>,
}

impl Schema {
    fn parse(sdl: &str) -> Result<Self, String> {
        let document: ServiceDocument = parse_schema(sdl).map_err(|e| e.to_string())?;
        let mut schema = Self {
            types: BTreeMap::new(),
            directives: BTreeMap::new(),
            roots: BTreeMap::new(),
        };
        let mut explicit_roots = false;
        for definition in &document.definitions {
            match definition {
                TypeSystemDefinition::Schema(def) => {
                    explicit_roots = true;
                    let def = &def.node;
                    for (operation, name) in [
                        ("query", &def.query),
                        ("mutation", &def.mutation),
                        ("subscription", &def.subscription),
                    ] {
                        if let Some(name) = name {
                            schema.roots.insert(operation, name.node.to_string());
                        }
                    }
                }
                TypeSystemDefinition::Type(def) => {
                    let def = &def.node;
                    schema.add_type(def.name.node.to_string(), &def.kind);
                }
                TypeSystemDefinition::Directive(def) => {
                    let def = &def.node;
                    schema.directives.insert(
                        def.name.node.to_string(),
                        Directive {
                            args: def
                                .arguments
                                .iter()
                                .map(|a| Input::from_definition(&a.node))
                                .collect(),
                            locations: def
                                .locations
                                .iter()
                                .map(|l| format!("{:?}", l.node))
                                .collect(),
                        },
                    );
                }
            }
        }
        if !explicit_roots {
            // Without a `schema { … }` block the roots are the types with the default names.
            for (operation, name) in [
                ("query", "Query"),
                ("mutation", "Mutation"),
                ("subscription", "Subscription"),
            ] {
                if schema.types.contains_key(name) {
                    schema.roots.insert(operation, name.to_owned());
                }
            }
        }
        Ok(schema)
    }

    /// Adds a type definition, or merges an extension into the type it extends.
    fn add_type(&mut self, name: String, kind: &TypeKind) {
        let entry = self.types.entry(name).or_insert_with(|| NamedType {
            kind: Kind::of(kind),
            fields: BTreeMap::new(),
            input_fields: BTreeMap::new(),
            implements: BTreeSet::new(),
            members: BTreeSet::new(),
            values: BTreeSet::new(),
        });
        match kind {
            TypeKind::Scalar => {}
            TypeKind::Object(ObjectType { fields, implements })
            | TypeKind::Interface(InterfaceType { fields, implements }) => {
                entry.fields.extend(fields.iter().map(|field| {
                    let field = &field.node;
                    let args = field
                        .arguments
                        .iter()
                        .map(|a| Input::from_definition(&a.node))
                        .collect();
                    let ty = field.ty.node.clone();
                    (field.name.node.to_string(), Field { ty, args })
                }));
                entry
                    .implements
                    .extend(implements.iter().map(|n| n.node.to_string()));
            }
            TypeKind::Union(union) => entry
                .members
                .extend(union.members.iter().map(|n| n.node.to_string())),
            TypeKind::Enum(e) => entry
                .values
                .extend(e.values.iter().map(|v| v.node.value.node.to_string())),
            TypeKind::InputObject(input) => entry
                .input_fields
                .extend(input.fields.iter().map(|f| Input::from_definition(&f.node))),
        }
    }
}

/// A root operation type that is gone, or whose type is now another one.
fn compare_roots(shipped: &Schema, served: &Schema, changes: &mut Vec<String>) {
    for (operation, old) in &shipped.roots {
        match served.roots.get(operation) {
            None => changes.push(format!(
                "the {operation} root type `{old}` was removed: the schema no longer has \
                 {operation} operations"
            )),
            Some(new) if new != old => changes.push(format!(
                "the {operation} root type changed from `{old}` to `{new}`"
            )),
            Some(_) => {}
        }
    }
}

/// Changes inside a type whose kind did not change.
fn compare_type(name: &str, old: &NamedType, new: &NamedType, changes: &mut Vec<String>) {
    for (field_name, old_field) in &old.fields {
        let path = format!("{name}.{field_name}");
        let Some(new_field) = new.fields.get(field_name) else {
            changes.push(format!("field `{path}` was removed"));
            continue;
        };
        if output_change_breaks(&old_field.ty, &new_field.ty) {
            changes.push(format!(
                "field `{path}` changed type from `{}` to `{}`{}",
                old_field.ty,
                new_field.ty,
                why_output(&old_field.ty, &new_field.ty)
            ));
        }
        compare_arguments(&path, &old_field.args, &new_field.args, changes);
    }
    for (field_name, old_input) in &old.input_fields {
        let path = format!("{name}.{field_name}");
        let Some(new_input) = new.input_fields.get(field_name) else {
            changes.push(format!("input field `{path}` was removed"));
            continue;
        };
        compare_input(
            &format!("input field `{path}`"),
            old_input,
            new_input,
            changes,
        );
    }
    for (field_name, new_input) in &new.input_fields {
        if !old.input_fields.contains_key(field_name) && new_input.is_required() {
            changes.push(format!(
                "new required input field `{name}.{field_name}` (`{}` without a default)",
                new_input.ty
            ));
        }
    }
    for interface in old.implements.difference(&new.implements) {
        changes.push(format!(
            "type `{name}` no longer implements interface `{interface}`"
        ));
    }
    for member in old.members.difference(&new.members) {
        changes.push(format!("member `{member}` was removed from union `{name}`"));
    }
    for value in old.values.difference(&new.values) {
        changes.push(format!("enum value `{name}.{value}` was removed"));
    }
}

/// Removed, retyped and new required arguments of a field (`Type.field`) or directive (`@name`).
fn compare_arguments(
    owner: &str,
    old: &BTreeMap<String, Input>,
    new: &BTreeMap<String, Input>,
    changes: &mut Vec<String>,
) {
    for (arg, old_input) in old {
        let what = format!("argument `{owner}({arg}:)`");
        match new.get(arg) {
            None => changes.push(format!("{what} was removed")),
            Some(new_input) => compare_input(&what, old_input, new_input, changes),
        }
    }
    for (arg, new_input) in new {
        if !old.contains_key(arg) && new_input.is_required() {
            changes.push(format!(
                "new required argument `{owner}({arg}:)` (`{}` without a default)",
                new_input.ty
            ));
        }
    }
}

/// An argument or input field that exists in both schemas.
fn compare_input(what: &str, old: &Input, new: &Input, changes: &mut Vec<String>) {
    if input_change_breaks(&old.ty, &new.ty) {
        changes.push(format!(
            "{what} changed type from `{}` to `{}`{}",
            old.ty,
            new.ty,
            why_input(&old.ty, &new.ty)
        ));
    } else if !old.is_required() && new.is_required() {
        // Same non-null type, but the default that let clients omit it is gone.
        changes.push(format!("{what} lost its default value and is now required"));
    }
}

/// Whether a client reading a field of type `old` can be broken by it now being `new`: it may
/// now be null, or be a different type or list shape. Non-null is only ever added safely.
fn output_change_breaks(old: &Type, new: &Type) -> bool {
    (!old.nullable && new.nullable)
        || match (&old.base, &new.base) {
            (BaseType::Named(a), BaseType::Named(b)) => a != b,
            (BaseType::List(a), BaseType::List(b)) => output_change_breaks(a, b),
            _ => true,
        }
}

/// Whether a client sending a value of type `old` can be broken by it now being `new`: null (or
/// nothing) is no longer accepted, or the type or list shape differs. Nullability is only ever
/// relaxed safely.
fn input_change_breaks(old: &Type, new: &Type) -> bool {
    (old.nullable && !new.nullable)
        || match (&old.base, &new.base) {
            (BaseType::Named(a), BaseType::Named(b)) => a != b,
            (BaseType::List(a), BaseType::List(b)) => input_change_breaks(a, b),
            _ => true,
        }
}

/// A short reason for an output type change that is only about nullability.
fn why_output(old: &Type, new: &Type) -> &'static str {
    if old.base == new.base && !old.nullable && new.nullable {
        " (it may now be null)"
    } else {
        ""
    }
}

/// A short reason for an input type change that is only about nullability.
fn why_input(old: &Type, new: &Type) -> &'static str {
    if old.base == new.base && old.nullable && !new.nullable {
        " (null or omitting it is no longer accepted)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests;
