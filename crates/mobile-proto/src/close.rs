//! WebSocket close codes: how and why a connection ends. Each one says what the client should
//! do next. The close reason text is for people and logs (at most 123 bytes); never parse it.
//!
//! Recoverable refusals (a limit reached, a bad argument, an unknown topic) are not closes but
//! `error` messages with a [`crate::code`], and the connection stays open. A close means the
//! connection cannot go on.

/// Normal closure: the client is done, or the server ends a connection whose client asked it
/// to. Reconnect only if the app still needs the connection.
pub const NORMAL: u16 = 1000;

/// The server is going away (drain for a deploy or scale-in), after its `bye`: reconnect,
/// possibly to another instance, after a random delay up to `bye.ms`, and resume.
pub const GOING_AWAY: u16 = 1001;

/// A client message was larger than the `frame` limit announced in `welcome` (WebSocket
/// libraries send this code themselves when they enforce the limit). A client bug: do not
/// resend the same message.
pub const MESSAGE_TOO_BIG: u16 = 1009;

/// The server hit an unexpected internal failure. Reconnect with backoff and resume.
pub const INTERNAL_ERROR: u16 = 1011;

/// Protocol violation: a frame that does not decode (not one well-formed CBOR item or JSON text,
/// the wrong frame kind for the subprotocol, a value outside the data model), an unknown message
/// type, or a missing, unknown or mistyped key. A client bug; the reason names the problem.
pub const PROTOCOL_VIOLATION: u16 = 4400;

/// Not authenticated: the token in `auth` was refused (bad signature, expired, wrong issuer) —
/// the first `auth` or a re-authentication — or the first message was neither `auth`, `ping` nor
/// `pong`. Get a fresh token, then reconnect.
pub const UNAUTHENTICATED: u16 = 4401;

/// Forbidden: a re-authentication (`auth` after `welcome`) carried a valid token for another
/// user. A connection's user never changes: to switch user, open a new connection.
pub const FORBIDDEN: u16 = 4403;

/// The client negotiated neither `switchyard-mobile.v1.cbor` nor `switchyard-mobile.v1.json`.
/// A client bug or an unsupported client version.
pub const SUBPROTOCOL_REQUIRED: u16 = 4406;

/// Timeout: no `auth` within the server's authentication timeout after the upgrade, or nothing
/// at all received from the client for two heartbeat intervals (2 × `welcome.hb`). Reconnect
/// with backoff and resume.
pub const TIMEOUT: u16 = 4408;

/// Conflict: a `call` whose `id` is still in flight on this connection. A client bug (answers
/// could otherwise be crossed).
pub const CONFLICT: u16 = 4409;

/// Too many connections: the user already has the server's maximum of connections open (counted
/// from `auth`). Sent instead of `welcome`. Close a connection the app no longer needs, or
/// reconnect with a long backoff.
pub const TOO_MANY_CONNECTIONS: u16 = 4429;

/// Token expired: the token of the connection's last `auth` reached its `exp` (plus the server's
/// leeway) and no `auth` with a fresh token came before. Get a fresh token, reconnect and resume;
/// to keep a connection open, send `auth` with a fresh token before `exp` (a re-authentication).
pub const TOKEN_EXPIRED: u16 = 4440;

/// Slow consumer: the client did not read fast enough and its bounded send queue filled with
/// events of a stream topic (`conversions`). Reconnect and resume from the last position seen:
/// nothing is lost. (State topics never cause this: their updates are conflated.)
pub const SLOW_CONSUMER: u16 = 4503;

/// Every close code of v1, with its constant's name.
pub const ALL: [(u16, &str); 13] = [
    (NORMAL, "NORMAL"),
    (GOING_AWAY, "GOING_AWAY"),
    (MESSAGE_TOO_BIG, "MESSAGE_TOO_BIG"),
    (INTERNAL_ERROR, "INTERNAL_ERROR"),
    (PROTOCOL_VIOLATION, "PROTOCOL_VIOLATION"),
    (UNAUTHENTICATED, "UNAUTHENTICATED"),
    (FORBIDDEN, "FORBIDDEN"),
    (SUBPROTOCOL_REQUIRED, "SUBPROTOCOL_REQUIRED"),
    (TIMEOUT, "TIMEOUT"),
    (CONFLICT, "CONFLICT"),
    (TOO_MANY_CONNECTIONS, "TOO_MANY_CONNECTIONS"),
    (TOKEN_EXPIRED, "TOKEN_EXPIRED"),
    (SLOW_CONSUMER, "SLOW_CONSUMER"),
];
