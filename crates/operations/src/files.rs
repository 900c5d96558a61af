//! The demo's file routes, as backend paths: where a signed-in user's statement and receipts
//! are on the `statements` backend. The gateways stream the bodies
//! (`switchyard_server::streaming`); this module only says where, so no gateway spells a
//! backend path, and validates what the client named before any call is made.

use demo_api::{Invalid, ReceiptName, UserId};

/// The backend path of `user`'s statement of `rows` rows (the backend's default without).
pub fn statement_path(user: &UserId, rows: Option<u64>) -> String {
    match rows {
        Some(rows) => format!("/v1/statements/{user}?rows={rows}"),
        None => format!("/v1/statements/{user}"),
    }
}

/// The backend path of `user`'s receipt called `name`, once `name` is a valid [`ReceiptName`]
/// (a plain file name: never a path, a hidden file or a parent).
pub fn receipt_path(user: &UserId, name: &str) -> Result<String, Invalid> {
    let name = ReceiptName::parse(name)?;
    Ok(format!("/v1/receipts/{user}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_user_and_only_plain_names() {
        let alice = UserId::parse("alice").unwrap();
        assert_eq!(
            statement_path(&alice, Some(5)),
            "/v1/statements/alice?rows=5"
        );
        assert_eq!(statement_path(&alice, None), "/v1/statements/alice");
        assert_eq!(
            receipt_path(&alice, "taxi.pdf").unwrap(),
            "/v1/receipts/alice/taxi.pdf"
        );
        for bad in ["..", "../bob/x", "a/b", ".hidden", "a%2f..%2fb"] {
            assert!(receipt_path(&alice, bad).is_err(), "{bad}");
        }
    }
}
