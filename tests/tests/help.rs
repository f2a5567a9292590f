//! Every binary and every gwctl verb explains each of its flags, arguments
//! and subcommands in `--help`.

use gateway_tests::help::{subcommands, undescribed};
use gateway_tests::procs::Spec;
use std::time::Duration;

fn help(binary: &str, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.push("--help");
    let output = Spec::new(binary, binary)
        .args(all.iter().copied())
        .run(Duration::from_secs(30));
    assert!(output.status.success(), "{binary} {all:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap_or_else(|e| panic!("{binary} {all:?}: {e}"))
}

/// Checks `binary ARGS --help` and, recursively, every subcommand it lists;
/// returns how many help texts were read.
fn check(binary: &str, args: &[&str], missing: &mut Vec<String>) -> usize {
    let text = help(binary, args);
    assert!(text.contains("Usage:"), "{binary} {args:?}:\n{text}");
    for entry in undescribed(&text) {
        missing.push(format!("{binary} {} --help: {entry}", args.join(" ")));
    }
    let mut read = 1;
    for sub in subcommands(&text) {
        let mut deeper = args.to_vec();
        deeper.push(&sub);
        read += check(binary, &deeper, missing);
    }
    read
}

#[test]
fn every_flag_of_every_binary_and_verb_is_described() {
    let mut missing = Vec::new();
    assert_eq!(check("data-plane", &[], &mut missing), 1);
    assert_eq!(check("control-plane", &[], &mut missing), 1);
    let gwctl = check("gwctl", &[], &mut missing);
    // gwctl itself, its 11 verbs and the actions of breaker, cache and token.
    assert!(gwctl >= 17, "only {gwctl} gwctl help texts found");
    assert!(
        missing.is_empty(),
        "without a description:\n{}",
        missing.join("\n")
    );
}
