//! Layering of configuration documents: the binary's defaults, rendered as a TOML document, with
//! the file deep-merged over them, then the environment overrides applied key by key.
//!
//! Tables merge key by key, at every depth, so a file or an override changes exactly the keys it
//! names and every other key keeps the binary's own default — including defaults that a binary
//! sets beyond its types' defaults (the launcher's demo secret, a gateway's default backends).
//! Anything that is not a table (a scalar, an array) replaces what was there. This module does
//! not check anything: the strict, unknown-key-refusing deserialisation of the merged document
//! does (see [`super::Source::load`]).

use serde::Serialize;

/// The defaults of a configuration type as a TOML table, the bottom layer of a load.
///
/// Fails (naming no key: it is the program's own defaults that cannot be written) only when a
/// default holds a value TOML cannot represent.
pub(super) fn defaults_table<T: Serialize>(defaults: &T) -> Result<toml::Table, String> {
    match toml::Value::try_from(defaults) {
        Ok(toml::Value::Table(table)) => Ok(table),
        Ok(other) => Err(format!(
            "the defaults are a {}, not a table",
            other.type_str()
        )),
        Err(e) => Err(format!("the defaults cannot be written as TOML: {e}")),
    }
}

/// Merges `over` into `base`: a table into a table key by key (recursively); anything else
/// replaces the value under its key.
pub(super) fn deep_merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(below)), toml::Value::Table(above)) => {
                deep_merge(below, above);
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().expect("test TOML")
    }

    #[test]
    fn tables_merge_key_by_key_at_every_depth() {
        let mut base = table("[a]\nx = 1\ny = 2\n[a.inner]\np = 1\nq = 2\n[b]\nz = 3\n");
        deep_merge(
            &mut base,
            table("[a]\nx = 10\n[a.inner]\nq = 20\n[c]\nw = 4\n"),
        );
        assert_eq!(
            base,
            table("[a]\nx = 10\ny = 2\n[a.inner]\np = 1\nq = 20\n[b]\nz = 3\n[c]\nw = 4\n")
        );
    }

    #[test]
    fn arrays_and_scalars_replace_and_a_type_change_replaces() {
        let mut base = table("list = [1, 2, 3]\n[t]\nk = 1\n");
        deep_merge(&mut base, table("list = [4]\nt = 5\n"));
        assert_eq!(base, table("list = [4]\nt = 5\n"));
    }
}
