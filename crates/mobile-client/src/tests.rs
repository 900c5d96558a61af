//! Unit tests of the client's parts: backoff and error classification.

use super::*;

#[test]
fn backoff_doubles_up_to_its_cap_and_jitters_below_it() {
    let b = Backoff {
        initial_ms: 100,
        max_ms: 1_000,
    };
    assert_eq!(b.cap(0), Duration::from_millis(100));
    assert_eq!(b.cap(1), Duration::from_millis(200));
    assert_eq!(b.cap(3), Duration::from_millis(800));
    assert_eq!(b.cap(4), Duration::from_millis(1_000));
    assert_eq!(b.cap(200), Duration::from_millis(1_000));
    for attempt in 0..10 {
        assert!(b.delay(attempt) <= b.cap(attempt));
    }
}

#[test]
fn fatal_closes_are_the_ones_a_retry_repeats() {
    let closed = |code| Error::Closed {
        code,
        reason: String::new(),
    };
    for code in [4400, 4401, 4406, 4409, 1009] {
        assert!(closed(code).is_fatal(), "{code}");
    }
    for code in [1000, 1001, 1006, 1011, 4408, 4503] {
        assert!(!closed(code).is_fatal(), "{code}");
    }
    assert!(
        Error::Unauthenticated {
            reason: String::new()
        }
        .is_fatal()
    );
    assert!(!Error::Timeout("welcome").is_fatal());
}
