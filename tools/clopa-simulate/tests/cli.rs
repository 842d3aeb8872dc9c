//! End-to-end tests of `clopa-simulate` on a tiny synthetic task with a tiny random model.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use candle_core::{Device, Tensor};
use clopa_nn::model_folder::{META_BASE_SHA256, META_GROUP};
use clopa_table::{Provenance, SplitKind, SplitRow, StepRow};

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Three 20^3 cases (a bright ball labelled 1), a 3-stage model with 16^3 patches, a manifest
    /// and a split with two holdout cases.
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let f = Fixture { dir };
        clopa_testkit::write_ball_task(
            f.dir.path(),
            &[[10.0, 10.0, 10.0], [8.0, 11.0, 9.0], [12.0, 9.0, 10.0]],
        );
        let split = |holdout: bool| {
            let mut rows: Vec<SplitRow> = ["toy_000", "toy_001"]
                .iter()
                .map(|id| SplitRow {
                    task: "toy".into(),
                    case_id: (*id).into(),
                    split: if holdout {
                        SplitKind::Holdout
                    } else {
                        SplitKind::Train
                    },
                    run: (!holdout).then_some(0),
                    position: (!holdout).then_some(1),
                    episode: None,
                    role: None,
                })
                .collect();
            rows.push(SplitRow {
                task: "toy".into(),
                case_id: "toy_002".into(),
                split: SplitKind::Train,
                run: Some(0),
                position: Some(2),
                episode: None,
                role: None,
            });
            rows
        };
        let prov = Provenance::new("test", "0", serde_json::json!({}), 0);
        clopa_table::write_split(&f.path("split.parquet"), &split(true), &prov).unwrap();
        clopa_table::write_split(&f.path("train-only.parquet"), &split(false), &prov).unwrap();

        clopa_testkit::write_tiny_model(&f.path("model"), 3);
        f
    }

    fn cmd(&self, out: &Path) -> Command {
        self.cmd_with(out, true)
    }

    /// The command with `-q` unless `quiet` is false (then info messages reach stderr).
    fn cmd_with(&self, out: &Path, quiet: bool) -> Command {
        let mut c = self.inputs();
        c.args(["--edits", "3", "--infer-runs", "2", "--seed", "5"])
            .args(quiet.then_some("-q"))
            .arg("-o")
            .arg(out);
        c
    }

    /// The command with only the model, manifest, split and data root.
    fn inputs(&self) -> Command {
        let mut c = Command::cargo_bin("clopa-simulate").unwrap();
        c.env_remove("CLOPA_DATA")
            .arg("--model")
            .arg(self.path("model"))
            .arg("--manifest")
            .arg(self.path("toy.toml"))
            .arg("--split")
            .arg(self.path("split.parquet"))
            .arg("--data-root")
            .arg(self.path("data"));
        c
    }

    /// An `in` checkpoint: every tensor of the group (the base's values) with one norm changed.
    fn checkpoint(&self, name: &str, base: &str) -> PathBuf {
        let model = clopa_nn::load_model_folder(&self.path("model")).unwrap();
        let mut t = model.group_tensors(clopa_nn::ParamGroup::In);
        t.insert(
            "encoder.stem.convs.0.norm.weight".to_string(),
            Tensor::new(&[1.5f32, 0.5, 1.0, 2.0], &Device::Cpu).unwrap(),
        );
        let mut md = BTreeMap::new();
        md.insert(META_BASE_SHA256.to_string(), base.to_string());
        md.insert(META_GROUP.to_string(), "in".to_string());
        md.insert("clopa.run".to_string(), "1".to_string());
        md.insert("clopa.episode".to_string(), "2".to_string());
        md.insert("clopa.n_seen".to_string(), "10".to_string());
        let p = self.path(name);
        clopa_nn::write_episode_checkpoint(&p, &t, &md).unwrap();
        p
    }
}

fn without_seconds(rows: &[StepRow]) -> Vec<StepRow> {
    rows.iter()
        .cloned()
        .map(|r| StepRow { seconds: 0.0, ..r })
        .collect()
}

#[test]
fn table_has_cases_x_runs_x_steps_rows_and_repeats_with_the_seed() {
    let f = Fixture::new();
    let out = f.path("out/steps.parquet");
    f.cmd(&out)
        .arg("--save-masks")
        .arg(f.path("masks"))
        .assert()
        .success();
    let rows = clopa_table::read_steps(&out).unwrap();
    assert_eq!(rows.len(), 2 * 2 * (3 + 1));
    assert!(rows.iter().all(|r| r.task == "toy"
        && r.method == "base"
        && r.run.is_none()
        && r.episode == 0
        && r.n_seen == 0));
    for r in rows.iter().filter(|r| r.step == 0) {
        assert_eq!((r.fg_clicks, r.bg_clicks), (1, 1), "{r:?}");
    }
    assert!(rows.iter().all(|r| (0.0..=1.0).contains(&r.dice)
        && (0.0..=1.0).contains(&r.nsd)
        && r.seconds >= 0.0));
    let mut keys: Vec<_> = rows
        .iter()
        .map(|r| (r.case_id.clone(), r.infer_run, r.step))
        .collect();
    keys.dedup();
    assert_eq!(keys.len(), 16);
    assert!(f.path("masks/toy_000_infer1.nii.gz").exists());

    // ... on one thread too: the thread count changes no result
    let again = f.path("again.parquet");
    f.cmd(&again).args(["--threads", "1"]).assert().success();
    assert_eq!(
        without_seconds(&rows),
        without_seconds(&clopa_table::read_steps(&again).unwrap())
    );
    // another seed runs too (its clicks differ; with a random network the values may not)
    let other = f.path("other.parquet");
    f.cmd(&other).args(["--seed", "6"]).assert().success();
    assert_eq!(clopa_table::read_steps(&other).unwrap().len(), 16);
}

#[test]
fn a_checkpoint_sets_method_run_episode_and_n_seen() {
    let f = Fixture::new();
    let sha = clopa_nn::sha256_file(&f.path("model/model.safetensors")).unwrap();
    let ck = f.checkpoint("ep2.safetensors", &sha);
    let out = f.path("ep2.steps.parquet");
    f.cmd(&out)
        .arg("--checkpoint")
        .arg(&ck)
        .args(["--edits", "1", "--infer-runs", "1"])
        .assert()
        .success();
    let rows = clopa_table::read_steps(&out).unwrap();
    assert_eq!(rows.len(), 2 * 2);
    assert!(
        rows.iter()
            .all(|r| r.method == "in" && r.run == Some(1) && r.episode == 2 && r.n_seen == 10)
    );
}

fn fails_with(mut cmd: Command, out: &Path, needle: &str) -> String {
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(needle), "{err}");
    assert!(!out.exists(), "nothing may be written on error");
    err
}

#[test]
fn a_checkpoint_of_another_base_is_refused() {
    let f = Fixture::new();
    let ck = f.checkpoint("other.safetensors", &"0".repeat(64));
    let out = f.path("steps.parquet");
    let mut c = f.cmd(&out);
    c.arg("--checkpoint").arg(&ck);
    fails_with(c, &out, "other.safetensors");
}

#[test]
fn a_checkpoint_labelled_episode_0_is_refused() {
    // episode 0 labels the base model's rows: a checkpoint's rows must not join them
    let f = Fixture::new();
    let sha = clopa_nn::sha256_file(&f.path("model/model.safetensors")).unwrap();
    let ck = f.checkpoint("ep0.safetensors", &sha);
    let mut c = clopa_nn::read_episode_checkpoint(&ck).unwrap();
    c.metadata.insert("clopa.episode".into(), "0".into());
    clopa_nn::write_episode_checkpoint(&ck, &c.tensors, &c.metadata).unwrap();
    let out = f.path("steps.parquet");
    let mut cmd = f.cmd(&out);
    cmd.arg("--checkpoint").arg(&ck);
    let err = fails_with(cmd, &out, "ep0.safetensors");
    assert!(err.contains("episodes count from 1"), "{err}");
}

#[test]
fn a_checkpoint_chain_must_be_one_run_and_group_in_ascending_episodes() {
    let f = Fixture::new();
    let sha = clopa_nn::sha256_file(&f.path("model/model.safetensors")).unwrap();
    let model = clopa_nn::load_model_folder(&f.path("model")).unwrap();
    let ck = |name: &str, group: &str, episode: u32| {
        // every tensor of the group, as clopa-train-episode writes them
        let t = model.group_tensors(group.parse().unwrap());
        let md = BTreeMap::from([
            (META_BASE_SHA256.to_string(), sha.clone()),
            (META_GROUP.to_string(), group.to_string()),
            ("clopa.run".to_string(), "0".to_string()),
            ("clopa.episode".to_string(), episode.to_string()),
            ("clopa.n_seen".to_string(), (5 * episode).to_string()),
        ]);
        let p = f.path(name);
        clopa_nn::write_episode_checkpoint(&p, &t, &md).unwrap();
        p
    };
    let (e1, e2, c1) = (
        ck("e1.st", "in", 1),
        ck("e2.st", "in", 2),
        ck("c1.st", "cn", 1),
    );
    let out = f.path("steps.parquet");
    let chain = |cks: &[&PathBuf]| {
        let mut c = f.cmd(&out);
        for p in cks {
            c.arg("--checkpoint").arg(p);
        }
        c
    };
    fails_with(chain(&[&e2, &e1]), &out, "ascending order");
    fails_with(chain(&[&e1, &c1]), &out, "not one chain");
    chain(&[&e1, &e2]).assert().success();
    let rows = clopa_table::read_steps(&out).unwrap();
    assert!(
        rows.iter()
            .all(|r| r.method == "in" && r.episode == 2 && r.n_seen == 10)
    );
}

#[test]
fn a_split_without_holdout_rows_is_refused() {
    let f = Fixture::new();
    let out = f.path("steps.parquet");
    let mut c = f.cmd(&out);
    c.arg("--split").arg(f.path("train-only.parquet"));
    fails_with(c, &out, "no holdout rows");
}

#[test]
fn a_missing_dataset_is_refused() {
    let f = Fixture::new();
    let out = f.path("steps.parquet");
    let mut c = f.cmd(&out);
    c.arg("--data-root").arg(f.path("nowhere"));
    let err = fails_with(c, &out, "does not exist");
    insta::assert_snapshot!(err.replace(f.dir.path().to_str().unwrap(), "[TMP]"), @"clopa-simulate: error: the dataset folder [TMP]/nowhere/toy does not exist (set --data-root or $CLOPA_DATA, or make the manifest's `dataset` absolute)");
}

/// Rewrites case `toy_001`'s image with `f` applied to its volume.
fn corrupt_image(f: &Fixture, change: impl FnOnce(&mut clopa_volume::Volume<f32>)) -> PathBuf {
    let p = f.path("data/toy/imagesTr/toy_001.nii.gz");
    let mut v = clopa_volume::read_image(&p, 0).unwrap();
    change(&mut v);
    clopa_volume::write_nifti(&p, &v).unwrap();
    p
}

#[test]
fn a_nan_image_is_refused_naming_the_file() {
    let f = Fixture::new();
    corrupt_image(&f, |v| v.data[123] = f32::NAN);
    let out = f.path("steps.parquet");
    let err = fails_with(f.cmd(&out), &out, "imagesTr/toy_001.nii.gz");
    assert!(err.contains("NaN"), "{err}");
}

#[test]
fn a_constant_image_is_refused_naming_the_file() {
    // z-score normalisation would divide by zero (nnInteractive fills such an image with NaN)
    let f = Fixture::new();
    corrupt_image(&f, |v| v.data.fill(7.0));
    let out = f.path("steps.parquet");
    let err = fails_with(f.cmd(&out), &out, "imagesTr/toy_001.nii.gz");
    assert!(err.contains("constant"), "{err}");
}

#[test]
fn a_label_changed_after_the_split_is_refused_naming_the_file() {
    // An undeclared label value, then an empty foreground: clopa-split refuses both, and so
    // must the tools that read the cases later (else the case is scored as Dice 0).
    for (value, needle) in [(3u16, "[3]"), (0, "is empty")] {
        let f = Fixture::new();
        let p = f.path("data/toy/labelsTr/toy_001.nii.gz");
        let mut v = clopa_volume::read_labels(&p).unwrap();
        v.data
            .iter_mut()
            .filter(|l| **l == 1)
            .for_each(|l| *l = value);
        clopa_volume::write_nifti(&p, &v).unwrap();
        let out = f.path("steps.parquet");
        let err = fails_with(f.cmd(&out), &out, "labelsTr/toy_001.nii.gz");
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn an_image_on_another_grid_is_refused_naming_the_file() {
    let f = Fixture::new();
    corrupt_image(&f, |v| {
        *v = clopa_volume::Volume::from_shape(
            [20, 20, 19],
            v.spacing,
            v.data[..20 * 20 * 19].to_vec(),
        )
        .unwrap()
    });
    let out = f.path("steps.parquet");
    fails_with(f.cmd(&out), &out, "toy_001.nii.gz");
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn a_complete_output_is_skipped_unless_forced_or_the_settings_differ() {
    let f = Fixture::new();
    let out = f.path("steps.parquet");
    f.cmd(&out).assert().success();
    let first = clopa_table::read_steps(&out).unwrap();
    // make a rewrite visible even on file systems with coarse timestamps
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    std::fs::File::options()
        .write(true)
        .open(&out)
        .unwrap()
        .set_modified(old)
        .unwrap();

    let o = f.cmd_with(&out, false).output().unwrap();
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("already complete"), "{err}");
    assert_eq!(mtime(&out), old, "a complete output is not rewritten");

    f.cmd(&out).arg("--force").assert().success();
    assert_ne!(mtime(&out), old, "--force recomputes");
    assert_eq!(
        without_seconds(&first),
        without_seconds(&clopa_table::read_steps(&out).unwrap())
    );

    // other settings (one more edit) are recomputed, not skipped
    let before = mtime(&out);
    std::fs::File::options()
        .write(true)
        .open(&out)
        .unwrap()
        .set_modified(old)
        .unwrap();
    f.cmd(&out).args(["--edits", "4"]).assert().success();
    assert_ne!(mtime(&out), old);
    assert!(before != old);
    assert_eq!(clopa_table::read_steps(&out).unwrap().len(), 2 * 2 * 5);

    // the GPU precision is a setting too (fp32 = the default, so skipped; fp16 recomputed)
    let is_skipped = |args: &[&str]| {
        let o = f.cmd_with(&out, false).args(args).output().unwrap();
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stderr).contains("already complete")
    };
    assert!(is_skipped(&["--edits", "4", "--precision", "fp32"]));
    assert!(!is_skipped(&["--edits", "4", "--precision", "fp16"]));
    assert!(is_skipped(&["--edits", "4", "--precision", "fp16"]));
    // a computing run says its resolved settings first (no progress bar without a terminal)
    let o = f
        .cmd_with(&out, false)
        .args(["--edits", "4", "--precision", "bf16"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("x 2 inference run(s) x (1 + 4 edits) steps, patch [")
            && e.contains("bf16 on cpu"),
        "{e}"
    );

    // a holdout case's image rewritten (size or time differ) is other data: recomputed once
    let img = corrupt_image(&f, |v| v.data[5] += 1.0);
    std::fs::File::options()
        .write(true)
        .open(&img)
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert!(!is_skipped(&["--edits", "4", "--precision", "fp16"]));
    assert!(is_skipped(&["--edits", "4", "--precision", "fp16"]));

    // The same files under other spellings are the same request (clopa-reproduce reruns with
    // `./runs/q` for `runs/q`); another manifest file, even a copy, is not.
    let spelled = |manifest: &Path| {
        let o = Command::cargo_bin("clopa-simulate")
            .unwrap()
            .env_remove("CLOPA_DATA")
            .arg("--model")
            .arg(f.path("model").join("."))
            .arg("--manifest")
            .arg(manifest)
            .arg("--split")
            .arg(f.path(".").join("split.parquet"))
            .arg("--data-root")
            .arg(f.path("data").join(""))
            .args(["--edits", "4", "--infer-runs", "2", "--seed", "5"])
            .args(["--precision", "fp16", "-o"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).contains("already complete")
    };
    assert!(spelled(&f.path(".").join("toy.toml")));
    std::fs::copy(f.path("toy.toml"), f.path("toy-copy.toml")).unwrap();
    assert!(!spelled(&f.path("toy-copy.toml")));
    // the manifest edited in place: its expert Dice is not the table's business, another NSD
    // tolerance scores other numbers
    let copy = f.path("toy-copy.toml");
    let edit = |from: &str, to: &str| {
        let text = std::fs::read_to_string(&copy).unwrap();
        assert!(text.contains(from), "{text}");
        std::fs::write(&copy, text.replace(from, to)).unwrap();
    };
    edit("expert_dice = 0.9", "expert_dice = 0.8");
    assert!(spelled(&copy));
    edit("nsd_tolerance_mm = 2.0", "nsd_tolerance_mm = 3.0");
    assert!(!spelled(&copy));
    assert!(spelled(&copy));
    // a table from before the manifest's `target` was recorded is kept, not recomputed
    let mut prov = clopa_table::read_provenance(&out).unwrap();
    assert_eq!(prov.settings["target"]["nsd_tolerance_mm"], 3.0);
    prov.settings.as_object_mut().unwrap().remove("target");
    let rows = clopa_table::read_steps(&out).unwrap();
    clopa_table::write_steps(&out, &rows, &prov).unwrap();
    assert!(spelled(&copy));

    // a truncated (unreadable) output is recomputed
    std::fs::write(&out, b"PAR1 not really").unwrap();
    f.cmd(&out).args(["--edits", "4"]).assert().success();
    assert_eq!(clopa_table::read_steps(&out).unwrap().len(), 2 * 2 * 5);

    // masks asked for but missing: the table alone is not done, the run writes them
    let masks = f.path("masks");
    f.cmd(&out)
        .args(["--edits", "4"])
        .arg("--save-masks")
        .arg(&masks)
        .assert()
        .success();
    assert!(masks.join("toy_000_infer1.nii.gz").is_file());
}

#[test]
fn an_output_that_cannot_be_written_fails_before_the_work() {
    let f = Fixture::new();
    // A file where the output's folder should be (root may write anywhere, so no chmod test).
    std::fs::write(f.path("blocked"), b"").unwrap();
    let out = f.path("blocked/steps.parquet");
    // Debug logs show a line per simulated case: there must be none.
    let o = f
        .cmd_with(&out, false)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("blocked") && !err.contains(".clopa-"), "{err}");
    assert!(
        !err.contains("simulated"),
        "failed only after simulating: {err}"
    );
    // A folder in the output's place: refused, without first saying it will be recomputed.
    std::fs::create_dir(f.path("a-folder")).unwrap();
    let o = f.cmd_with(&f.path("a-folder"), false).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("a-folder") && !err.contains("recomputing"),
        "{err}"
    );
}

#[test]
fn dash_writes_parquet_to_stdout() {
    let f = Fixture::new();
    let file = f.path("steps.parquet");
    f.cmd(&file).assert().success();
    let o = f.cmd(Path::new("-")).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout.starts_with(b"PAR1") && o.stdout.ends_with(b"PAR1"));
    let piped = f.path("piped.parquet");
    std::fs::write(&piped, &o.stdout).unwrap();
    assert_eq!(
        without_seconds(&clopa_table::read_steps(&file).unwrap()),
        without_seconds(&clopa_table::read_steps(&piped).unwrap())
    );
    assert!(!f.path("-").exists());
}

#[test]
fn cuda_without_the_feature_is_a_clear_error_and_bad_devices_are_usage_errors() {
    let f = Fixture::new();
    let out = f.path("steps.parquet");
    let mut c = f.cmd(&out);
    c.args(["--device", "cuda"]);
    fails_with(c, &out, "built without CUDA support");
    let mut c = f.cmd(&out);
    c.args(["--device", "gpu"]);
    c.assert().code(2);
    let mut c = f.cmd(&out);
    c.args(["--device", "cpu"]);
    c.assert().success();
}

#[test]
fn bad_patch_is_a_usage_error() {
    let f = Fixture::new();
    let out = f.path("steps.parquet");
    let mut c = f.cmd(&out);
    c.args(["--patch", "1,2"]);
    c.assert().code(2);
    let mut c = f.cmd(&out);
    c.args(["--infer-runs", "0"]);
    c.assert().code(2);
    let mut c = f.cmd(&out);
    c.args(["--patch", "18"]);
    fails_with(c, &out, "total stride 4");
}

#[test]
fn help_explains_itself() {
    let o = Command::cargo_bin("clopa-simulate")
        .unwrap()
        .arg("--help")
        .output()
        .unwrap();
    assert!(o.status.success());
    insta::assert_snapshot!(String::from_utf8_lossy(&o.stdout));
}

#[test]
fn automatic_mode_scores_each_case_once_without_clicks_and_prints_the_mean() {
    let f = Fixture::new();
    let out = f.path("auto.parquet");
    let run = || {
        let mut c = f.inputs();
        c.args(["--automatic", "--method", "expert", "-q", "-o"])
            .arg(&out);
        let o = c.assert().success().get_output().stdout.clone();
        String::from_utf8(o).unwrap()
    };
    let printed = run();
    let rows = clopa_table::read_steps(&out).unwrap();
    assert_eq!(rows.len(), 2, "one row per holdout case");
    assert!(rows.iter().all(|r| r.step == 0
        && r.infer_run == 0
        && (r.fg_clicks, r.bg_clicks) == (0, 0)
        && r.method == "expert"));
    let mean = rows.iter().map(|r| r.dice).sum::<f64>() / 2.0;
    assert_eq!(
        printed.trim(),
        format!("toy: mean Dice {mean:.4} over 2 cases")
    );
    // a rerun skips the finished table and still prints the threshold
    assert_eq!(run(), printed);
    // with the table on stdout, the line goes to stderr and stdout stays pure Parquet
    let o = f
        .inputs()
        .args(["--automatic", "--method", "expert", "-q", "-o", "-"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(o.stdout.starts_with(b"PAR1") && o.stdout.ends_with(b"PAR1"));
    assert_eq!(String::from_utf8(o.stderr).unwrap(), printed);
    // the edit settings make no sense without a simulated user
    let mut c = f.cmd(&f.path("x.parquet"));
    c.arg("--automatic").assert().code(2);
}
