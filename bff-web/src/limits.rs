//! Query limits async-graphql does not have built in: the number of aliases in one operation
//! (aliases multiply the work of one request without deepening it). Applied as an extension at
//! parse time, so HTTP and WebSocket operations are limited alike.

use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{Positioned, ServerError, ServerResult, Variables};

/// Refuses operations with more than `max` aliases.
pub(crate) struct AliasLimit(pub(crate) usize);

impl ExtensionFactory for AliasLimit {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(AliasLimitExtension(self.0))
    }
}

struct AliasLimitExtension(usize);

#[async_trait::async_trait]
impl Extension for AliasLimitExtension {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await?;
        let mut count = 0;
        for (_, op) in doc.operations.iter() {
            count += aliases(&op.node.selection_set);
        }
        for fragment in doc.fragments.values() {
            count += aliases(&fragment.node.selection_set);
        }
        if count > self.0 {
            return Err(ServerError::new(
                format!("too many aliases: {count}, at most {}", self.0),
                None,
            ));
        }
        Ok(doc)
    }
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
