//! Document limits async-graphql does not have built in, checked right after parsing and before
//! validation or execution, so HTTP (POST and GET) and WebSocket operations are limited alike:
//!
//! - the number of aliases in one document (aliases multiply the work of one request without
//!   deepening it);
//! - the number of field selections once fragment spreads are expanded. A document of a few
//!   hundred bytes whose fragments each spread the next one twice expands to 2^N fields; the
//!   engine's validation and execution walk that expansion (memory and CPU exponential in the
//!   document's size: 917 bytes took ~860 MB). This check walks each fragment ONCE, memoising its
//!   expanded size with saturating arithmetic, so its cost is bounded by the document's size, and
//!   it refuses fragment cycles and absurd nesting itself instead of recursing into them.
//!
//! It deliberately does not replace the engine's depth and complexity limits: those still run on
//! every document that passes here.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextPrepareRequest,
};
use async_graphql::parser::types::{
    ExecutableDocument, FragmentDefinition, Selection, SelectionSet,
};
use async_graphql::{Name, Positioned, Request, ServerError, ServerResult};

/// Deepest nesting of selection sets and fragment spreads the walk follows; deeper documents are
/// refused (the engine's own depth limit is far lower for anything valid).
const MAX_NESTING: usize = 128;

/// Refuses documents with more than `max_aliases` aliases or more than `max_selections`
/// selections once fragments are expanded.
pub(crate) struct DocumentLimits {
    /// Most aliases one document may use.
    pub(crate) max_aliases: usize,
    /// Most selections one operation may have with its fragments expanded.
    pub(crate) max_selections: usize,
}

impl ExtensionFactory for DocumentLimits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(DocumentLimitsExtension {
            max_aliases: self.max_aliases,
            max_selections: self.max_selections,
        })
    }
}

struct DocumentLimitsExtension {
    max_aliases: usize,
    max_selections: usize,
}

#[async_trait::async_trait]
impl Extension for DocumentLimitsExtension {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        // A document that does not parse is left to the engine, which reports the syntax error.
        if let Ok(doc) = request.parsed_query() {
            check(doc, self.max_aliases, self.max_selections)
                .map_err(|message| ServerError::new(message, None))?;
        }
        next.run(ctx, request).await
    }
}

/// Checks a parsed document against the limits; the error is the message for the client.
pub(crate) fn check(
    doc: &ExecutableDocument,
    max_aliases: usize,
    max_selections: usize,
) -> Result<(), String> {
    let mut count = 0;
    for (_, op) in doc.operations.iter() {
        count += aliases(&op.node.selection_set);
    }
    for fragment in doc.fragments.values() {
        count += aliases(&fragment.node.selection_set);
    }
    if count > max_aliases {
        return Err(format!("too many aliases: {count}, at most {max_aliases}"));
    }
    let mut walk = Expansion {
        fragments: &doc.fragments,
        sizes: HashMap::new(),
        limit: max_selections,
    };
    for (_, op) in doc.operations.iter() {
        let selections = walk.size(&op.node.selection_set, 0)?;
        if selections > max_selections {
            return Err(format!(
                "the operation has too many selections once its fragments are expanded: more \
                 than {max_selections}"
            ));
        }
    }
    Ok(())
}

fn aliases(set: &Positioned<SelectionSet>) -> usize {
    set.node
        .items
        .iter()
        .map(|s| match &s.node {
            Selection::Field(f) => {
                usize::from(f.node.alias.is_some()) + aliases(&f.node.selection_set)
            }
            Selection::InlineFragment(i) => aliases(&i.node.selection_set),
            Selection::FragmentSpread(_) => 0,
        })
        .sum()
}

/// The expanded size of selection sets, each named fragment computed once.
struct Expansion<'a> {
    fragments: &'a HashMap<Name, Positioned<FragmentDefinition>>,
    /// A fragment's expanded size once known; `None` while it is being walked (a spread that
    /// meets it again is a cycle).
    sizes: HashMap<&'a str, Option<usize>>,
    /// Sizes are capped just above the limit: the exact figure beyond it does not matter.
    limit: usize,
}

impl<'a> Expansion<'a> {
    fn size(&mut self, set: &'a Positioned<SelectionSet>, nesting: usize) -> Result<usize, String> {
        if nesting > MAX_NESTING {
            return Err(format!(
                "the document nests selections and fragments more than {MAX_NESTING} deep"
            ));
        }
        let cap = self.limit.saturating_add(1);
        let mut total: usize = 0;
        for item in &set.node.items {
            // Every selection counts, spreads and inline fragments too: the engine visits
            // them all, even a spread of a fragment that selects nothing it knows.
            let inner = match &item.node {
                Selection::Field(f) => self.size(&f.node.selection_set, nesting + 1)?,
                Selection::InlineFragment(i) => self.size(&i.node.selection_set, nesting + 1)?,
                Selection::FragmentSpread(s) => {
                    self.fragment(s.node.fragment_name.node.as_str(), nesting + 1)?
                }
            };
            let add = inner.saturating_add(1);
            total = total.saturating_add(add).min(cap);
        }
        Ok(total)
    }

    fn fragment(&mut self, name: &str, nesting: usize) -> Result<usize, String> {
        let Some((key, definition)) = self.fragments.get_key_value(name) else {
            // An unknown fragment: validation reports it.
            return Ok(0);
        };
        match self.sizes.get(key.as_str()) {
            Some(Some(size)) => return Ok(*size),
            Some(None) => {
                return Err(format!(
                    "fragment `{name}` spreads itself (a fragment cycle)"
                ));
            }
            None => {}
        }
        self.sizes.insert(key.as_str(), None);
        let size = self.size(&definition.node.selection_set, nesting)?;
        self.sizes.insert(key.as_str(), Some(size));
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doubling(levels: usize) -> String {
        let mut q = String::from("query { ...F0 }");
        for i in 0..levels {
            q.push_str(&format!(
                " fragment F{i} on Query {{ ...F{n} ...F{n} }}",
                n = i + 1
            ));
        }
        q.push_str(&format!(" fragment F{levels} on Query {{ __typename }}"));
        q
    }

    fn run(q: &str) -> Result<(), String> {
        let doc = async_graphql::parser::parse_query(q).expect("parses");
        check(&doc, 30, 1000)
    }

    #[test]
    fn exponential_fragment_spreads_are_refused_cheaply() {
        // A walk of the expansion would never finish these (2^400 selections).
        for levels in [10, 22, 26, 60, 120] {
            let err = run(&doubling(levels)).expect_err("refused");
            assert!(err.contains("too many selections"), "{err}");
        }
        let err = run(&doubling(400)).expect_err("refused");
        assert!(err.contains("deep"), "{err}");
        // 2^8 leaves and their spreads (511 selections in all) stay within 1,000.
        run(&doubling(8)).expect("allowed");
    }

    #[test]
    fn fragment_cycles_and_deep_chains_are_refused() {
        let err = run("query { ...A } fragment A on Query { ...B } fragment B on Query { ...A }")
            .expect_err("cycle");
        assert!(err.contains("cycle"), "{err}");
        let mut q = String::from("query { ...F0 }");
        for i in 0..2000 {
            q.push_str(&format!(" fragment F{i} on Query {{ ...F{} }}", i + 1));
        }
        q.push_str(" fragment F2000 on Query { __typename }");
        let err = run(&q).expect_err("too deep");
        assert!(err.contains("deep"), "{err}");
    }

    #[test]
    fn shared_fragments_are_counted_once_per_use() {
        // Three spreads of a 2-field fragment: 9 selections, well within the limit.
        run("query { ...A ...A ...A } fragment A on Query { __typename a: __typename }")
            .expect("allowed");
        let doc = async_graphql::parser::parse_query(
            "query { ...A ...A ...A } fragment A on Query { __typename b: __typename }",
        )
        .expect("parses");
        assert!(check(&doc, 30, 8).is_err());
        assert!(check(&doc, 30, 9).is_ok());
    }
}
