//! Error codes: the stable `code` of an `error` message, for programs (its `msg` is for
//! people). An error answers a `call` (it carries the call's `id`) or a `sub` (it carries the
//! `topic`); the connection stays open. Clients must treat a code they do not know like
//! [`INTERNAL`].

/// A call's `args` are missing, mistyped or invalid (an unknown currency, a malformed amount);
/// `msg` names the argument. Do not retry unchanged.
pub const INVALID_ARGS: &str = "invalid_args";

/// A call's `op` is not an operation of this version.
pub const UNKNOWN_OP: &str = "unknown_op";

/// A `sub` named a topic that does not exist (or a malformed topic name).
pub const UNKNOWN_TOPIC: &str = "unknown_topic";

/// The signed-in user may not use this topic or operation.
pub const FORBIDDEN: &str = "forbidden";

/// A `sub` named a topic this connection is already subscribed to; the existing subscription
/// goes on unchanged.
pub const ALREADY_SUBSCRIBED: &str = "already_subscribed";

/// A `sub` would exceed `welcome.limits.subs`; unsubscribe from something first.
pub const TOO_MANY_SUBSCRIPTIONS: &str = "too_many_subscriptions";

/// A `call` would exceed `welcome.limits.calls` in flight; wait for an answer first.
pub const TOO_MANY_CALLS: &str = "too_many_calls";

/// A `convert` would exceed the user's daily limit.
pub const LIMIT_EXCEEDED: &str = "limit_exceeded";

/// A backend the call needs did not answer within the call's deadline. Retrying later may
/// succeed; for `convert`, first check whether it happened (the `conversions` topic).
pub const UPSTREAM_TIMEOUT: &str = "upstream_timeout";

/// A backend the call needs failed or is unavailable (`msg` names it). Retrying later may
/// succeed; for `convert`, first check whether it happened.
pub const UPSTREAM_ERROR: &str = "upstream_error";

/// A `sub` could not start because the topic's event source is unavailable. Retry later.
pub const EVENTS_UNAVAILABLE: &str = "events_unavailable";

/// The server is draining (after `bye`) and would close before finishing this `sub` or `call`:
/// send it on the new connection.
pub const DRAINING: &str = "draining";

/// The client sent messages (or `sub`s) faster than its rate limit: the message this answers
/// (a `call` by `id`, a `sub` by `topic`, or neither for any other message) was not acted on.
/// Send it again after `retry_ms` milliseconds. Added to v1 after it shipped (additive).
pub const RATE_LIMITED: &str = "rate_limited";

/// An unexpected server failure.
pub const INTERNAL: &str = "internal";

/// Every error code of v1.
pub const ALL: [&str; 14] = [
    INVALID_ARGS,
    UNKNOWN_OP,
    UNKNOWN_TOPIC,
    FORBIDDEN,
    ALREADY_SUBSCRIBED,
    TOO_MANY_SUBSCRIPTIONS,
    TOO_MANY_CALLS,
    LIMIT_EXCEEDED,
    UPSTREAM_TIMEOUT,
    UPSTREAM_ERROR,
    EVENTS_UNAVAILABLE,
    DRAINING,
    RATE_LIMITED,
    INTERNAL,
];
