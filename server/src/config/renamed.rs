//! Keys a binary has renamed: the old name is still read, from the file and from the
//! environment, as the new one, with a deprecation warning; a file or an environment that sets
//! both names is refused, naming them both.
//!
//! Each binary declares its renames ([`crate::cli::ServerBinary::RENAMED_KEYS`]); this module
//! moves an old key to its new name in a layer (the file's table, or an override's path) before
//! that layer is merged over the defaults, so the strict deserialisation only ever sees new names.

/// A key that has a new name; both are dotted paths (`websocket.max_frame_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenamedKey {
    /// The name still accepted, deprecated.
    pub old: &'static str,
    /// The name to use.
    pub new: &'static str,
}

impl RenamedKey {
    /// The deprecation warning for a use of the old name in `place` (a file, a variable).
    pub fn warning(&self, place: &str) -> String {
        format!(
            "config key `{}` ({place}) is deprecated: it is now `{}`",
            self.old, self.new
        )
    }
}

/// Moves each old key of `renamed` found in `layer` to its new name, adding a warning each; an
/// error naming both keys when the layer sets both.
pub(super) fn rename_in_table(
    layer: &mut toml::Table,
    renamed: &[RenamedKey],
    place: &str,
    warnings: &mut Vec<String>,
) -> Result<(), (String, String)> {
    for r in renamed {
        let Some(value) = take(layer, r.old) else {
            continue;
        };
        if get(layer, r.new).is_some() {
            return Err((r.old.to_owned(), both(r)));
        }
        if !put(layer, r.new, value) {
            return Err((
                r.new.to_owned(),
                "a key on its path is not a table".to_owned(),
            ));
        }
        warnings.push(r.warning(place));
    }
    Ok(())
}

/// The path an override names, with an old key replaced by its new name (and a warning).
pub(super) fn rename_path(
    path: Vec<String>,
    renamed: &[RenamedKey],
    var: &str,
    warnings: &mut Vec<String>,
) -> Vec<String> {
    let dotted = path.join(".");
    match renamed.iter().find(|r| r.old == dotted) {
        Some(r) => {
            warnings.push(r.warning(&format!("environment variable {var}")));
            r.new.split('.').map(str::to_owned).collect()
        }
        None => path,
    }
}

/// The message for a layer that sets both names of `r`.
pub(super) fn both(r: &RenamedKey) -> String {
    format!(
        "both `{}` and `{}` are set; `{}` is the deprecated name of `{}`: keep only `{}`",
        r.old, r.new, r.old, r.new, r.new
    )
}

fn get<'t>(table: &'t toml::Table, dotted: &str) -> Option<&'t toml::Value> {
    let (parents, last) = split(dotted);
    let mut t = table;
    for seg in parents {
        t = t.get(seg)?.as_table()?;
    }
    t.get(last)
}

fn take(table: &mut toml::Table, dotted: &str) -> Option<toml::Value> {
    let (parents, last) = split(dotted);
    let mut t = table;
    for seg in parents {
        t = t.get_mut(seg)?.as_table_mut()?;
    }
    t.remove(last)
}

/// Inserts `value` at `dotted`; false when a key on the way is not a table.
fn put(table: &mut toml::Table, dotted: &str, value: toml::Value) -> bool {
    let (parents, last) = split(dotted);
    let mut t = table;
    for seg in parents {
        let entry = t
            .entry(seg.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(inner) => t = inner,
            _ => return false,
        }
    }
    t.insert(last.to_owned(), value);
    true
}

fn split(dotted: &str) -> (Vec<&str>, &str) {
    let mut segs: Vec<&str> = dotted.split('.').collect();
    let last = segs.pop().unwrap_or_default();
    (segs, last)
}
