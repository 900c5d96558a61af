//! The browser client's own unit tests (`client/test/*.test.mjs`, a scripted socket in place of
//! the gateway), run with `node --test` so that `cargo test` covers them. Needs node (>= 20) and
//! nothing from npm; without node this test fails, saying so; it never skips.

use std::path::Path;
use std::process::Command;

#[test]
fn the_browser_client_unit_tests_pass_under_node() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("client");
    let out = Command::new("node")
        .arg("--test")
        .arg("--test-reporter=tap")
        .arg("test/")
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `node` ({e}): install node >= 20"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "node --test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // A run that found no test file passes too: make sure the tests ran.
    let passed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("# pass "))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    assert!(
        passed >= 10,
        "expected the client's tests to run:\n{stdout}"
    );
    assert!(stdout.contains("# fail 0"), "{stdout}");
}
