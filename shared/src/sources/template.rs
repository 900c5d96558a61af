//! String templates with `{name}` placeholders, read both ways: *matched* against a string to
//! capture the placeholders' values (`rates.{base}-{quote}` against `rates.EUR-USD` gives
//! `base = EUR`, `quote = USD`), and *rendered* from values (`{"op":"watch","pair":"{base}/{quote}"}`).
//!
//! A placeholder is `{` then a lowercase letter, then lowercase letters, digits or `_`, then `}`;
//! any other brace is literal text, so JSON can be written as is. Matching is left to right: a
//! placeholder takes the text up to the first occurrence of the literal that follows it (or the
//! rest, when it is last); every value must be non-empty. Captured values must be one channel
//! segment (`A-Z a-z 0-9 - _`, at most [`MAX_VALUE_BYTES`]): a value from an upstream message can
//! never add a separator to a channel name (`prices.{symbol}` with symbol `X.Y`), nor inject text
//! into a rendered frame.

use std::collections::BTreeMap;
use std::fmt;

/// Longest captured value.
pub const MAX_VALUE_BYTES: usize = 64;

/// Longest placeholder name.
const MAX_NAME_BYTES: usize = 32;

/// Values of placeholders, by name.
pub type Vars = BTreeMap<String, String>;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(String),
}

/// A checked template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

/// Why a template cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Two placeholders with no literal text between them: where one ends is unknowable.
    #[error("placeholders `{{{0}}}` and `{{{1}}}` need literal text between them")]
    Adjacent(String, String),
    /// The same placeholder twice (a match could capture two different values).
    #[error("placeholder `{{{0}}}` appears twice")]
    Duplicate(String),
}

impl Template {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts: Vec<Part> = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            match placeholder(after) {
                Some(name) => {
                    literal.push_str(&rest[..open]);
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    if let Some(Part::Var(previous)) = parts.last() {
                        return Err(TemplateError::Adjacent(previous.clone(), name.to_owned()));
                    }
                    if parts.iter().any(|p| matches!(p, Part::Var(v) if v == name)) {
                        return Err(TemplateError::Duplicate(name.to_owned()));
                    }
                    parts.push(Part::Var(name.to_owned()));
                    rest = &after[name.len() + 1..];
                }
                None => {
                    literal.push_str(&rest[..=open]);
                    rest = after;
                }
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self {
            text: text.to_owned(),
            parts,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The placeholders' names, in order.
    pub fn vars(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// The literal text before the first placeholder (all of it when there is none).
    pub fn prefix(&self) -> &str {
        match self.parts.first() {
            Some(Part::Literal(l)) => l,
            _ => "",
        }
    }

    /// The placeholders' values when `s` has this template's shape, each one channel segment.
    pub fn capture(&self, s: &str) -> Option<Vars> {
        let mut vars = Vars::new();
        let mut rest = s;
        let mut parts = self.parts.iter().peekable();
        while let Some(part) = parts.next() {
            match part {
                Part::Literal(l) => rest = rest.strip_prefix(l.as_str())?,
                Part::Var(name) => {
                    let end = match parts.peek() {
                        Some(Part::Literal(next)) => rest.find(next.as_str())?,
                        _ => rest.len(),
                    };
                    let value = &rest[..end];
                    if !is_value(value) {
                        return None;
                    }
                    vars.insert(name.clone(), value.to_owned());
                    rest = &rest[end..];
                }
            }
        }
        rest.is_empty().then_some(vars)
    }

    /// The template with each placeholder replaced by its value; `None` when one has no value.
    pub fn render(&self, vars: &Vars) -> Option<String> {
        let mut out = String::with_capacity(self.text.len() + 16);
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Var(name) => out.push_str(vars.get(name)?),
            }
        }
        Some(out)
    }

    /// Whether every placeholder of this template has a value among `names`.
    pub fn covered_by<'a>(&self, mut names: impl FnMut(&str) -> bool + 'a) -> Result<(), String> {
        match self.vars().find(|v| !names(v)) {
            Some(missing) => Err(missing.to_owned()),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The placeholder name at the start of `s` (which follows a `{`), if `s` starts with one and
/// its closing `}`.
fn placeholder(s: &str) -> Option<&str> {
    let end = s.find('}')?;
    let name = &s[..end];
    let mut bytes = name.bytes();
    let first = bytes.next()?;
    (first.is_ascii_lowercase()
        && name.len() <= MAX_NAME_BYTES
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
    .then_some(name)
}

/// Whether `value` may be a placeholder's value: one channel segment.
pub fn is_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_VALUE_BYTES
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn captures_and_renders() {
        let t = Template::parse("rates.{base}-{quote}").unwrap();
        assert_eq!(t.prefix(), "rates.");
        assert_eq!(t.vars().collect::<Vec<_>>(), ["base", "quote"]);
        let v = t.capture("rates.EUR-USD").unwrap();
        assert_eq!(v, vars(&[("base", "EUR"), ("quote", "USD")]));
        assert_eq!(t.render(&v).unwrap(), "rates.EUR-USD");
        let pair = Template::parse("{base}/{quote}").unwrap();
        assert_eq!(pair.capture("EUR/USD").unwrap(), v);
        // The first separator splits: the rest goes to the last placeholder.
        assert_eq!(
            t.capture("rates.EUR-USD-X").unwrap(),
            vars(&[("base", "EUR"), ("quote", "USD-X")])
        );
    }

    #[test]
    fn json_braces_are_literal() {
        let t = Template::parse(r#"{"op":"watch","pairs":["{base}/{quote}"]}"#).unwrap();
        assert_eq!(
            t.render(&vars(&[("base", "EUR"), ("quote", "USD")]))
                .unwrap(),
            r#"{"op":"watch","pairs":["EUR/USD"]}"#
        );
        assert_eq!(t.render(&vars(&[("base", "EUR")])), None);
        let literal = Template::parse("{}{ x}{Upper}{1a}").unwrap();
        assert_eq!(literal.vars().count(), 0);
        assert_eq!(literal.render(&Vars::new()).unwrap(), "{}{ x}{Upper}{1a}");
    }

    #[test]
    fn refuses_what_would_be_ambiguous() {
        assert_eq!(
            Template::parse("{a}{b}"),
            Err(TemplateError::Adjacent("a".into(), "b".into()))
        );
        assert_eq!(
            Template::parse("{a}.{a}"),
            Err(TemplateError::Duplicate("a".into()))
        );
    }

    #[test]
    fn captured_values_are_one_segment() {
        let t = Template::parse("prices.{symbol}").unwrap();
        assert_eq!(
            t.capture("prices.AAPL").unwrap(),
            vars(&[("symbol", "AAPL")])
        );
        for bad in [
            "prices.",
            "prices.X.Y",
            "prices.a b",
            "prices.é",
            "prices.*",
            "prices.>",
            "price.AAPL",
            "prices.a/b",
        ] {
            assert_eq!(t.capture(bad), None, "{bad}");
        }
        assert_eq!(t.capture(&format!("prices.{}", "x".repeat(65))), None);
        assert!(t.capture(&format!("prices.{}", "x".repeat(64))).is_some());
    }
}
