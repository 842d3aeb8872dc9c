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

mod merge {
    //! `clopa-merge`: the merge step of clopa-reproduce as a tool.

    use super::*;
    use clopa_table::{Provenance, SplitKind, SplitRow};

    fn merge() -> Command {
        Command::cargo_bin("clopa-merge").unwrap()
    }

    /// A one-row table of task `task` whose clopa-eval used `threshold`.
    fn table(dir: &std::path::Path, name: &str, task: &str, threshold: f64) -> std::path::PathBuf {
        let row = SplitRow {
            task: task.into(),
            case_id: "c".into(),
            split: SplitKind::Holdout,
            run: None,
            position: None,
            episode: None,
            role: None,
        };
        let p = dir.join(name);
        let prov = Provenance::new(
            "clopa-eval",
            "0",
            serde_json::json!({ "threshold": threshold }),
            0,
        );
        clopa_table::write_split(&p, &[row], &prov).unwrap();
        p
    }

    #[test]
    fn tables_of_two_tasks_merge_with_their_thresholds() {
        let tmp = tempfile::tempdir().unwrap();
        let a = table(tmp.path(), "a.parquet", "organ", 0.94);
        let b = table(tmp.path(), "b.parquet", "vessels", 0.85);
        let out = tmp.path().join("cases.parquet");
        merge()
            .args([&a, &b])
            .arg("-o")
            .arg(&out)
            .assert()
            .success();
        let rows = clopa_table::read_split(&out).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.task.as_str()).collect::<Vec<_>>(),
            ["organ", "vessels"]
        );
        let prov = clopa_table::read_provenance(&out).unwrap();
        assert_eq!(prov.tool, "clopa-merge");
        assert_eq!(
            prov.settings["task_thresholds"],
            serde_json::json!({"organ": 0.94, "vessels": 0.85})
        );
    }

    #[test]
    fn a_task_twice_other_columns_and_stdout_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let a = table(tmp.path(), "a.parquet", "organ", 0.94);
        let a2 = table(tmp.path(), "a2.parquet", "organ", 0.94);
        let out = tmp.path().join("merged.parquet");
        // exit 1, nothing written; the message
        let refused = |inputs: [&std::path::PathBuf; 2]| {
            let o = merge().args(inputs).arg("-o").arg(&out).output().unwrap();
            assert_eq!(o.status.code(), Some(1));
            assert!(!out.exists());
            String::from_utf8_lossy(&o.stderr).into_owned()
        };
        let e = refused([&a, &a2]);
        assert!(
            e.contains("\"organ\" is in both")
                && e.contains("a.parquet")
                && e.contains("a2.parquet"),
            "{e}"
        );
        // a table of another kind (a steps table has other columns)
        let steps = tmp.path().join("steps.parquet");
        let prov = Provenance::new("clopa-simulate", "0", serde_json::json!({}), 0);
        clopa_table::write_steps(&steps, &[], &prov).unwrap();
        let e = refused([&a, &steps]);
        assert!(
            e.contains("other columns") && e.contains("steps.parquet"),
            "{e}"
        );
        // usage errors: no input, stdout
        assert_eq!(
            merge()
                .args(["-o", "x.parquet"])
                .output()
                .unwrap()
                .status
                .code(),
            Some(2)
        );
        let o = merge().arg(&a).args(["-o", "-"]).output().unwrap();
        assert_eq!(o.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&o.stderr).contains("not to stdout"));
    }

    #[test]
    fn help_has_the_by_hand_chain() {
        let out = merge().arg("--help").output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("clopa-eval")
                && text.contains("clopa-merge")
                && text.contains("clopa-rank"),
            "{text}"
        );
        // every example line fits an 80-column terminal (clap would break a longer one)
        let ex = &text[text.find("Example").unwrap()..];
        assert!(ex.lines().all(|l| l.chars().count() <= 78), "{ex}");
    }
}
