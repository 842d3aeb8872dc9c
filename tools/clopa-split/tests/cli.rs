//! `clopa-split` on tiny generated datasets: a good one, and each kind of bad input.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use clopa_table::{SplitKind, read_split};
use clopa_volume::{Volume, write_nifti};
use predicates::prelude::*;

const N: usize = 10;
const SHAPE: [usize; 3] = [6, 5, 4];

/// A dataset of `N` cases `case_000..` in `root/ds`, with labels 0, 1, 2, and its manifest.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    manifest: PathBuf,
    out: PathBuf,
}

fn image(seed: usize) -> Volume<f32> {
    let n = SHAPE.iter().product();
    let data = (0..n).map(|i| ((i * 7 + seed) % 13) as f32).collect();
    Volume::from_shape(SHAPE, [1.0, 1.5, 2.0], data).unwrap()
}

fn labels() -> Volume<u16> {
    let mut v =
        Volume::from_shape(SHAPE, [1.0, 1.5, 2.0], vec![0u16; SHAPE.iter().product()]).unwrap();
    for (x, y, z) in [(1, 1, 1), (1, 2, 1), (2, 1, 1)] {
        let i = v.index(x, y, z);
        v.data[i] = 1;
    }
    let i = v.index(4, 3, 2);
    v.data[i] = 2;
    v
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let ds = root.join("ds");
        std::fs::create_dir_all(ds.join("imagesTr")).unwrap();
        std::fs::create_dir_all(ds.join("labelsTr")).unwrap();
        let mut training = Vec::new();
        for i in 0..N {
            let id = format!("case_{i:03}");
            write_nifti(&ds.join(format!("imagesTr/{id}.nii.gz")), &image(i)).unwrap();
            write_nifti(&ds.join(format!("labelsTr/{id}.nii.gz")), &labels()).unwrap();
            training.push(serde_json::json!({
                "image": format!("./imagesTr/{id}.nii.gz"),
                "label": format!("./labelsTr/{id}.nii.gz"),
            }));
        }
        let json = serde_json::json!({
            "name": "tiny",
            "labels": {"0": "background", "1": "target", "2": "part"},
            "modality": {"0": "MRI"},
            "numTraining": N,
            "training": training,
        });
        std::fs::write(
            ds.join("dataset.json"),
            serde_json::to_string_pretty(&json).unwrap(),
        )
        .unwrap();
        let manifest = root.join("tiny.toml");
        std::fs::write(&manifest, manifest_text("[1, 2]")).unwrap();
        let out = root.join("out/split.parquet");
        Fixture {
            _dir: dir,
            root,
            manifest,
            out,
        }
    }

    fn ds(&self) -> PathBuf {
        self.root.join("ds")
    }

    /// The command with the manifest and output set, the dataset found through --data-root.
    fn cmd(&self) -> Command {
        let mut c = Command::cargo_bin("clopa-split").unwrap();
        c.env_remove("CLOPA_DATA")
            .arg("--data-root")
            .arg(&self.root)
            .arg(&self.manifest)
            .arg("-o")
            .arg(&self.out);
        c
    }

    /// Runs and expects exit 1, an error naming `file`, and no output left behind.
    fn fails_naming(&self, file: &str, also: &str) {
        let assert = self.cmd().assert().code(1);
        let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
        eprintln!("{stderr}"); // shown with --nocapture, to read the messages
        assert!(
            stderr.contains(file),
            "stderr should name {file}:\n{stderr}"
        );
        assert!(
            stderr.contains(also),
            "stderr should say {also:?}:\n{stderr}"
        );
        assert!(!self.out.exists(), "no output may be written");
        let out_dir = self.out.parent().unwrap();
        if out_dir.exists() {
            assert_eq!(
                std::fs::read_dir(out_dir).unwrap().count(),
                0,
                "no temporary file may be left"
            );
        }
    }
}

fn manifest_text(labels: &str) -> String {
    format!(
        "name = \"tiny\"\ndataset = \"ds\"\nchannel = 0\nlabels = {labels}\nlargest_component = false\n\
         nsd_tolerance_mm = 2.0\nexpert_dice = 0.8\n"
    )
}

#[test]
fn good_dataset_writes_the_split() {
    let f = Fixture::new();
    let profile = f.root.join("p.toml");
    std::fs::write(
        &profile,
        "train_runs = 2\nrun_seeds = [11, 12]\nmax_holdout = 4\n",
    )
    .unwrap();
    f.cmd()
        .arg("-q")
        .arg("--profile")
        .arg(&profile)
        .assert()
        .success();
    let rows = read_split(&f.out).unwrap();
    // Holdout ceil(10/2) = 5, capped at 4; a stream of 5 cases; 2 runs.
    let holdout: Vec<_> = rows
        .iter()
        .filter(|r| r.split == SplitKind::Holdout)
        .collect();
    assert_eq!(holdout.len(), 4);
    assert_eq!(rows.len(), 4 + 2 * 5);
    assert!(rows.iter().all(|r| r.task == "tiny"));
    let mut streams = Vec::new();
    for run in 0..2 {
        let mut stream: Vec<_> = rows.iter().filter(|r| r.run == Some(run)).collect();
        stream.sort_by_key(|r| r.position);
        // N = 5: one episode at position 5, positions 1-4 train, 5 val.
        let roles: Vec<_> = stream
            .iter()
            .map(|r| (r.position.unwrap(), r.episode, r.role.map(|r| r.as_str())))
            .collect();
        assert_eq!(
            roles,
            [
                (1, Some(1), Some("train")),
                (2, Some(1), Some("train")),
                (3, Some(1), Some("train")),
                (4, Some(1), Some("train")),
                (5, Some(1), Some("val")),
            ]
        );
        assert!(
            stream
                .iter()
                .all(|r| !holdout.iter().any(|h| h.case_id == r.case_id))
        );
        let mut ids: Vec<_> = stream.iter().map(|r| r.case_id.clone()).collect();
        ids.sort();
        streams.push(ids);
    }
    assert_eq!(
        streams[0], streams[1],
        "every run permutes the same stream cases"
    );
    let prov = clopa_table::read_provenance(&f.out).unwrap();
    assert_eq!(prov.tool, "clopa-split");
    assert_eq!(prov.settings["manifest"]["name"], "tiny");
    assert_eq!(
        prov.settings["profile"]["run_seeds"],
        serde_json::json!([11, 12])
    );
}

#[test]
fn without_a_profile_the_quick_profile_applies() {
    let f = Fixture::new();
    f.cmd().arg("-q").assert().success();
    let quick = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/quick.toml");
    let out2 = f.root.join("out/quick.parquet");
    Command::cargo_bin("clopa-split")
        .unwrap()
        .env_remove("CLOPA_DATA")
        .arg("--data-root")
        .arg(&f.root)
        .arg(&f.manifest)
        .arg("-o")
        .arg(&out2)
        .arg("--profile")
        .arg(&quick)
        .assert()
        .success();
    assert_eq!(read_split(&f.out).unwrap(), read_split(&out2).unwrap());
}

#[test]
fn profile_seed_and_data_root_are_honoured() {
    let f = Fixture::new();
    let paper = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/paper.toml");
    // Move the dataset into root/data: only --data-root, $CLOPA_DATA or the default ./data
    // (from the root as working directory) find it.
    let data = f.root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::rename(f.ds(), data.join("ds")).unwrap();
    let split = || {
        let mut c = Command::cargo_bin("clopa-split").unwrap();
        c.env_remove("CLOPA_DATA").arg(&f.manifest);
        c
    };
    split()
        .arg("-o")
        .arg(&f.out)
        .arg("--profile")
        .arg(&paper)
        .arg("--data-root")
        .arg(&data)
        .assert()
        .success();
    let a = read_split(&f.out).unwrap();
    assert_eq!(
        a.iter().filter_map(|r| r.run).max(),
        Some(2),
        "paper profile: 3 runs"
    );
    // $CLOPA_DATA works like --data-root.
    let out2 = f.root.join("out/b.parquet");
    Command::cargo_bin("clopa-split")
        .unwrap()
        .env("CLOPA_DATA", &data)
        .arg(&f.manifest)
        .args(["-o"])
        .arg(&out2)
        .arg("--profile")
        .arg(&paper)
        .assert()
        .success();
    assert_eq!(read_split(&out2).unwrap(), a);
    // Neither: ./data of the working directory.
    let out_default = f.root.join("out/default.parquet");
    split()
        .current_dir(&f.root)
        .arg("-o")
        .arg(&out_default)
        .arg("--profile")
        .arg(&paper)
        .assert()
        .success();
    assert_eq!(read_split(&out_default).unwrap(), a);
    // ... and elsewhere it is not found, naming the folder and how to point at the data.
    split()
        .current_dir(f.ds().parent().unwrap().join("out"))
        .args(["-o", "x.parquet"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("data/ds").and(predicates::str::contains("--data-root")));
    // Another seed, another holdout.
    let out3 = f.root.join("out/c.parquet");
    Command::cargo_bin("clopa-split")
        .unwrap()
        .env("CLOPA_DATA", &data)
        .arg(&f.manifest)
        .arg("-o")
        .arg(&out3)
        .args(["--seed", "7", "--set", "train_runs=1"])
        .assert()
        .success();
    let c = read_split(&out3).unwrap();
    let hold = |rows: &[clopa_table::SplitRow]| {
        rows.iter()
            .filter(|r| r.split == SplitKind::Holdout)
            .map(|r| r.case_id.clone())
            .collect::<Vec<_>>()
    };
    assert_ne!(hold(&a), hold(&c));
    assert_eq!(c.iter().filter_map(|r| r.run).max(), Some(0));
    assert_eq!(clopa_table::read_provenance(&out3).unwrap().seed, 7);
}

#[test]
fn show_schedule_prints_every_run() {
    let f = Fixture::new();
    let out = f
        .cmd()
        // the default (quick) profile has one training run; two show that every run is printed
        .args(["--show-schedule", "--set", "run_seeds=[341103, 55432]"])
        .args(["--set", "train_runs=2"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("N = 5"), "{text}");
    assert!(text.contains("run 0 (stream seed 341103)"), "{text}");
    assert!(text.contains("run 1 (stream seed 55432)"), "{text}");
    assert!(text.contains("fires at"), "{text}");
}

#[test]
fn stdout_output() {
    let f = Fixture::new();
    let mut c = Command::cargo_bin("clopa-split").unwrap();
    let out = c
        .env_remove("CLOPA_DATA")
        .arg("--data-root")
        .arg(&f.root)
        .arg(&f.manifest)
        .args(["-o", "-"])
        .assert()
        .success();
    assert_eq!(&out.get_output().stdout[..4], b"PAR1");
}

/// An output that cannot be written is refused before any case is read, saying why.
#[test]
fn an_unwritable_output_is_named_before_the_work() {
    let f = Fixture::new();
    let file = f.root.join("afile");
    std::fs::write(&file, "x").unwrap();
    for (out, why) in [
        (file.join("split.parquet"), "afile is a file"),
        (f.root.clone(), "it is a folder, not a file"),
    ] {
        let mut c = Command::cargo_bin("clopa-split").unwrap();
        c.env_remove("CLOPA_DATA")
            .arg("--data-root")
            .arg(&f.root)
            .arg(&f.manifest)
            .arg("-o")
            .arg(&out)
            .assert()
            .code(1)
            .stderr(predicates::str::contains(why));
    }
}

#[test]
fn truncated_nifti_is_refused() {
    let f = Fixture::new();
    let p = f.ds().join("imagesTr/case_003.nii.gz");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    f.fails_naming("case_003.nii.gz", "case case_003");
}

#[test]
fn grid_mismatch_is_refused() {
    let f = Fixture::new();
    let mut l = labels();
    l.spacing = [1.0, 1.0, 1.0];
    l.affine = clopa_volume::diag_affine(l.spacing);
    write_nifti(&f.ds().join("labelsTr/case_004.nii.gz"), &l).unwrap();
    f.fails_naming("labelsTr/case_004.nii.gz", "spacing");
}

#[test]
fn affine_mismatch_is_refused() {
    let f = Fixture::new();
    let mut l = labels();
    l.affine[0][3] = 5.0; // same shape and spacing, shifted origin
    write_nifti(&f.ds().join("labelsTr/case_009.nii.gz"), &l).unwrap();
    f.fails_naming("labelsTr/case_009.nii.gz", "affine");
}

#[test]
fn shape_mismatch_is_refused() {
    let f = Fixture::new();
    let v = Volume::from_shape([6, 5, 3], [1.0, 1.5, 2.0], vec![1u16; 90]).unwrap();
    write_nifti(&f.ds().join("labelsTr/case_002.nii.gz"), &v).unwrap();
    f.fails_naming("case_002.nii.gz", "shape [6, 5, 4] vs [6, 5, 3]");
}

#[test]
fn label_outside_dataset_labels_is_refused() {
    let f = Fixture::new();
    let mut l = labels();
    l.data[0] = 3;
    write_nifti(&f.ds().join("labelsTr/case_005.nii.gz"), &l).unwrap();
    f.fails_naming("labelsTr/case_005.nii.gz", "[3]");
}

#[test]
fn nan_intensities_are_refused() {
    let f = Fixture::new();
    let mut im = image(6);
    im.data[7] = f32::NAN;
    write_nifti(&f.ds().join("imagesTr/case_006.nii.gz"), &im).unwrap();
    f.fails_naming("imagesTr/case_006.nii.gz", "NaN");
}

#[test]
fn empty_foreground_is_refused() {
    let f = Fixture::new();
    let mut l = labels();
    l.data.iter_mut().for_each(|v| {
        if *v == 1 {
            *v = 0
        }
    });
    write_nifti(&f.ds().join("labelsTr/case_007.nii.gz"), &l).unwrap();
    // Label 2 alone is still foreground for labels [1, 2] ...
    f.cmd().arg("-q").assert().success();
    std::fs::remove_file(&f.out).unwrap();
    // ... but not for labels [1].
    std::fs::write(&f.manifest, manifest_text("[1]")).unwrap();
    f.fails_naming("labelsTr/case_007.nii.gz", "empty");
}

#[test]
fn every_bad_case_is_listed() {
    let f = Fixture::new();
    for id in ["case_001", "case_008"] {
        std::fs::write(f.ds().join(format!("labelsTr/{id}.nii.gz")), b"junk").unwrap();
    }
    f.fails_naming("case_001.nii.gz", "case_008.nii.gz");
}

#[test]
fn manifest_label_missing_from_dataset_json_is_refused() {
    let f = Fixture::new();
    std::fs::write(&f.manifest, manifest_text("[4]")).unwrap();
    f.fails_naming("dataset.json", "label 4");
}

#[test]
fn manifest_with_a_missing_key_is_refused() {
    let f = Fixture::new();
    let text = manifest_text("[1]").replace("expert_dice = 0.8\n", "");
    std::fs::write(&f.manifest, text).unwrap();
    f.fails_naming("tiny.toml", "expert_dice");
}

#[test]
fn missing_dataset_folder_is_refused() {
    let f = Fixture::new();
    std::fs::remove_dir_all(f.ds()).unwrap();
    f.fails_naming("ds", "does not exist");
}

#[test]
fn bad_set_override_is_refused() {
    let f = Fixture::new();
    f.cmd()
        .args(["--set", "epochz=3"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("epochz"));
    assert!(!f.out.exists());
    // not KEY=VALUE at all: a usage error
    f.cmd()
        .args(["--set", "train_runs"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("KEY=VALUE"));
    assert!(!f.out.exists());
}

#[test]
fn usage_errors_exit_2() {
    Command::cargo_bin("clopa-split").unwrap().assert().code(2);
    // the schedule goes to stdout, so the table cannot
    let f = Fixture::new();
    Command::cargo_bin("clopa-split")
        .unwrap()
        .env_remove("CLOPA_DATA")
        .arg("--data-root")
        .arg(&f.root)
        .arg(&f.manifest)
        .args(["--show-schedule", "-o", "-"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--show-schedule"));
}

#[test]
fn help_snapshot() {
    let out = Command::cargo_bin("clopa-split")
        .unwrap()
        .arg("--help")
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(text.contains("Example:"));
    insta::assert_snapshot!(text);
}
