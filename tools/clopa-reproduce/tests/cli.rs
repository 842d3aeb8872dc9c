//! CLI tests of `clopa-reproduce` that need no other tool (the whole chain is tested end to end
//! in `tests/tests/reproduce.rs`).

#![allow(clippy::unwrap_used)]

use assert_cmd::Command;

fn cmd() -> Command {
    Command::cargo_bin("clopa-reproduce").unwrap()
}

fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn help_has_an_example() {
    let out = cmd().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("Example:") && text.contains("--profile"),
        "{text}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = cmd().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = cmd().args(["-o", "x", "--bogus"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn missing_tools_are_named_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let out = cmd()
        .current_dir(repo_root())
        .args(["--profile", "pipelines/tiny.toml", "--bin-dir"])
        .arg(tmp.path())
        .arg("-o")
        .arg(tmp.path().join("run"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    for t in [
        "clopa-split",
        "clopa-simulate",
        "clopa-train-episode",
        "clopa-rank",
    ] {
        assert!(err.contains(t), "{err}");
    }
    assert!(!tmp.path().join("run").exists());
}

#[test]
fn bad_profile_and_bad_set_exit_1_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "epochs = -1\n").unwrap();
    let out = cmd()
        .arg("--profile")
        .arg(&bad)
        .arg("-o")
        .arg(tmp.path().join("run"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr).unwrap().contains("bad.toml"));
    let out = cmd()
        .args(["--set", "no_such_key=1", "-o"])
        .arg(tmp.path().join("run"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("no_such_key")
    );
    // not KEY=VALUE at all: a usage error
    let out = cmd()
        .args(["--set", "epochs", "-o"])
        .arg(tmp.path().join("run"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("KEY=VALUE"));
}
