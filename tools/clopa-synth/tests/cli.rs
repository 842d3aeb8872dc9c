//! Command-line tests of clopa-synth on tiny grids.

#![allow(clippy::unwrap_used)] // a failing unwrap is a failing test

use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;

fn synth() -> Command {
    let mut cmd = Command::cargo_bin("clopa-synth").unwrap();
    // Fixed help width so the snapshot does not depend on the terminal.
    cmd.env("COLUMNS", "100").env_remove("RUST_LOG");
    cmd
}

fn run_small(dir: &Path, seed: &str, cases: &str) -> assert_cmd::assert::Assert {
    synth()
        .args([
            "--task", "small", "--cases", cases, "--seed", seed, "--size", "16,18,16", "-q", "-o",
        ])
        .arg(dir)
        .assert()
}

#[test]
fn writes_an_msd_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ds");
    run_small(&out, "3", "2").success();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("dataset.json")).unwrap()).unwrap();
    assert_eq!(json["numTraining"], 2);
    assert_eq!(json["numTest"], 0);
    assert_eq!(json["tensorImageSize"], "3D");
    assert_eq!(json["modality"]["0"], "MRI");
    assert_eq!(json["labels"]["0"], "background");
    let training = json["training"].as_array().unwrap();
    assert_eq!(training.len(), 2);
    for entry in training {
        for key in ["image", "label"] {
            let rel = entry[key].as_str().unwrap();
            let vol = clopa_volume::read_labels(&out.join(rel.trim_start_matches("./")));
            if key == "label" {
                let vol = vol.unwrap();
                assert_eq!(vol.shape, [16, 18, 16]);
                assert!(vol.data.iter().any(|&v| v > 0), "{rel} has foreground");
            } else {
                assert!(out.join(rel.trim_start_matches("./")).is_file(), "{rel}");
            }
        }
    }
}

#[test]
fn same_seed_gives_identical_files_and_another_seed_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    run_small(&a, "5", "2").success();
    run_small(&b, "5", "2").success();
    run_small(&c, "6", "2").success();
    for sub in [
        "imagesTr/synth_small_000.nii.gz",
        "labelsTr/synth_small_001.nii.gz",
        "dataset.json",
    ] {
        assert_eq!(
            std::fs::read(a.join(sub)).unwrap(),
            std::fs::read(b.join(sub)).unwrap(),
            "{sub}"
        );
    }
    assert_ne!(
        std::fs::read(a.join("imagesTr/synth_small_000.nii.gz")).unwrap(),
        std::fs::read(c.join("imagesTr/synth_small_000.nii.gz")).unwrap()
    );
}

#[test]
fn rerun_is_idempotent_and_other_settings_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ds");
    run_small(&out, "1", "1").success();
    let img = out.join("imagesTr/synth_small_000.nii.gz");
    let before = std::fs::metadata(&img).unwrap().modified().unwrap();
    // Extending to 2 cases keeps case 0 as it was (not rewritten).
    run_small(&out, "1", "2").success();
    assert_eq!(std::fs::metadata(&img).unwrap().modified().unwrap(), before);
    assert!(out.join("labelsTr/synth_small_001.nii.gz").is_file());
    run_small(&out, "2", "2")
        .code(1)
        .stderr(predicate::str::contains("other settings").and(predicate::str::contains("seed 1")));
}

#[test]
fn refuses_a_foreign_non_empty_folder() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("precious.txt"), "keep").unwrap();
    run_small(tmp.path(), "1", "1")
        .code(1)
        .stderr(predicate::str::contains("not a clopa-synth output"));
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn unknown_kind_exits_2_and_lists_kinds() {
    let tmp = tempfile::tempdir().unwrap();
    synth()
        .args(["--task", "spleen", "--cases", "1", "-o"])
        .arg(tmp.path().join("x"))
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("spleen").and(predicate::str::contains(
                "vessels, organ, small, lesion, generic",
            )),
        );
}

#[test]
fn bad_size_cases_and_output_exit_2() {
    for args in [
        ["--cases", "1", "--size", "4,4", "-o", "x"],
        ["--cases", "1", "--size", "0,0,0", "-o", "x"],
        ["--cases", "1", "--size", "1,1,1", "-o", "x"],
        ["--cases", "1", "--size", "16,16,513", "-o", "x"],
        ["--cases", "0", "--size", "16,16,16", "-o", "x"],
        ["--cases", "1", "--size", "16,16,16", "-o", "-"],
    ] {
        let tmp = tempfile::tempdir().unwrap();
        synth()
            .current_dir(tmp.path())
            .args(["--task", "organ"])
            .args(args)
            .assert()
            .code(2);
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "{args:?}"
        );
    }
}

#[test]
fn help_mentions_an_example() {
    let out = synth()
        .arg("--help")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("Example:") && text.contains("clopa-synth --task vessels"),
        "{text}"
    );
    insta::assert_snapshot!("help", text);
}
