//! End-to-end tests of `clopa-train-episode` on tiny ball cases with a tiny random model.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use candle_core::{Device, Tensor};
use clopa_nn::ParamGroup;
use clopa_nn::model_folder::{META_BASE_SHA256, META_GROUP};
use clopa_table::{Provenance, Role, SplitKind, SplitRow};

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Six 20³ ball cases, a manifest, a split whose run 0 has episode 1 (4 train + 1 val) and
    /// episode 2 (one more train case), and a 3-stage model (features 4-8-16).
    fn new() -> Fixture {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        let centres: Vec<_> = (0..6).map(clopa_testkit::ball_centre).collect();
        clopa_testkit::write_ball_task(f.dir.path(), &centres);
        f.write_split(4);
        clopa_testkit::write_tiny_model(&f.path("model"), 1);
        f
    }

    /// The split: episode 1 caches cases 0–4 with case `val` the validation case, episode 2
    /// adds case 5.
    fn write_split(&self, val: usize) {
        let row = |k: usize, episode: Option<u32>, role: Option<Role>| SplitRow {
            task: "toy".into(),
            case_id: format!("toy_{k:03}"),
            split: SplitKind::Train,
            run: Some(0),
            position: Some(k as u32 + 1),
            episode,
            role,
        };
        let role = |k| if k == val { Role::Val } else { Role::Train };
        let mut rows: Vec<SplitRow> = (0..5).map(|k| row(k, Some(1), Some(role(k)))).collect();
        rows.push(row(5, Some(2), Some(Role::Train)));
        let prov = Provenance::new("test", "0", serde_json::json!({}), 0);
        clopa_table::write_split(&self.path("split.parquet"), &rows, &prov).unwrap();
    }

    fn cmd(&self, episode: u32, group: &str, out: &Path) -> Command {
        let mut c = Command::cargo_bin("clopa-train-episode").unwrap();
        c.env_remove("CLOPA_DATA")
            .arg("--model")
            .arg(self.path("model"))
            .arg("--manifest")
            .arg(self.path("toy.toml"))
            .arg("--split")
            .arg(self.path("split.parquet"))
            .arg("--data-root")
            .arg(self.path("data"))
            .args([
                "--run",
                "0",
                "--episode",
                &episode.to_string(),
                "--group",
                group,
            ])
            .args([
                "--epochs",
                "1",
                "--steps-per-epoch",
                "2",
                "--patch",
                "16",
                "--edits",
                "2",
            ])
            .args(["--profile"])
            .arg(self.profile())
            .arg("-o")
            .arg(out);
        c
    }

    fn profile(&self) -> PathBuf {
        let p = self.path("profile.toml");
        if !p.exists() {
            let prof = clopa_config::Profile {
                val_patches: 2,
                ..Default::default()
            };
            std::fs::write(&p, prof.to_toml_string().unwrap()).unwrap();
        }
        p
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

fn spec() -> clopa_nn::UNetSpec {
    clopa_testkit::tiny_spec()
}

#[test]
fn help_explains_itself_with_an_example() {
    let out = Command::cargo_bin("clopa-train-episode")
        .unwrap()
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    insta::assert_snapshot!("help", text);
}

#[test]
fn trains_an_in_episode_writes_checkpoint_and_log_and_skips_a_rerun() {
    let f = Fixture::new();
    let ck = f.path("out/ep1.safetensors");
    f.cmd(1, "in", &ck).assert().success();
    let c = clopa_nn::read_episode_checkpoint(&ck).unwrap();
    let names: BTreeSet<String> = ParamGroup::In.names(&spec()).into_iter().collect();
    assert_eq!(c.tensors.keys().cloned().collect::<BTreeSet<_>>(), names);
    let sha = clopa_nn::sha256_file(&f.path("model/model.safetensors")).unwrap();
    assert_eq!(c.metadata[META_BASE_SHA256], sha);
    assert_eq!(c.metadata[META_GROUP], "in");
    assert_eq!(c.metadata["clopa.run"], "0");
    assert_eq!(c.metadata["clopa.episode"], "1");
    assert_eq!(c.metadata["clopa.n_seen"], "5");
    let cfg: serde_json::Value = serde_json::from_str(&c.metadata["clopa.config"]).unwrap();
    assert_eq!(cfg["train"]["patch"], serde_json::json!([16, 16, 16]));
    let log = clopa_adapt::read_epoch_log(&f.path("out/ep1.log.parquet")).unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log.iter().filter(|r| r.selected).count(), 1);
    assert!(log[1].train_loss.unwrap().is_finite() && log[0].val_score.is_some());

    // a rerun finds the complete output and leaves it alone
    let before = std::fs::metadata(&ck).unwrap().modified().unwrap();
    f.cmd(1, "in", &ck).assert().success();
    assert_eq!(std::fs::metadata(&ck).unwrap().modified().unwrap(), before);

    // the same seed gives a bit-identical checkpoint: tensors, metadata and the file's bytes
    let again = f.path("out/again.safetensors");
    f.cmd(1, "in", &again).assert().success();
    let a = clopa_nn::read_episode_checkpoint(&again).unwrap();
    assert_eq!(a.metadata, c.metadata);
    for (n, t) in &c.tensors {
        assert!(bits(t) == bits(&a.tensors[n]), "{n} differs");
    }
    assert!(std::fs::read(&again).unwrap() == std::fs::read(&ck).unwrap());

    // episode 2 warm-starts from episode 1
    let ck2 = f.path("out/ep2.safetensors");
    f.cmd(2, "in", &ck2)
        .arg("--init")
        .arg(&ck)
        .assert()
        .success();
    let c2 = clopa_nn::read_episode_checkpoint(&ck2).unwrap();
    assert_eq!(c2.metadata["clopa.n_seen"], "6");

    // ... and not from itself: --init must be episode E − 1
    let out = f
        .cmd(2, "in", &f.path("out/ep2b.safetensors"))
        .arg("--init")
        .arg(&ck2)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is episode 2") && err.contains("ep2.safetensors"),
        "{err}"
    );
    // ... and a chain of --init goes up in episodes
    let out = f
        .cmd(2, "in", &f.path("out/ep2c.safetensors"))
        .arg("--init")
        .arg(&ck)
        .arg("--init")
        .arg(&ck)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ascending order"), "{err}");
}

#[test]
fn a_cn_checkpoint_holds_the_cn_tensors() {
    let f = Fixture::new();
    let ck = f.path("cn.safetensors");
    f.cmd(1, "cn", &ck)
        .args(["--no-augment"])
        .assert()
        .success();
    let c = clopa_nn::read_episode_checkpoint(&ck).unwrap();
    let names: BTreeSet<String> = ParamGroup::Cn.names(&spec()).into_iter().collect();
    assert_eq!(c.tensors.keys().cloned().collect::<BTreeSet<_>>(), names);
    assert!(names.contains("encoder.stem.convs.0.conv.weight"));
}

#[test]
fn an_episode_missing_from_the_split_is_refused() {
    let f = Fixture::new();
    let out = f.cmd(7, "in", &f.path("x.safetensors")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("split.parquet") && err.contains("no episode 7"),
        "{err}"
    );
    assert!(err.contains("[1, 2]"), "{err}");
    assert!(!f.path("x.safetensors").exists());
    // A run the split does not have is named as such.
    let mut c = f.cmd(1, "in", &f.path("x.safetensors"));
    c.args(["--run", "3"]);
    let err = String::from_utf8(c.output().unwrap().stderr).unwrap();
    assert!(
        err.contains("no training run 3") && err.contains("[0]"),
        "{err}"
    );
    // An episode whose cache holds validation cases only, then a split with no rows at all.
    let mut rows = clopa_table::read_split(&f.path("split.parquet")).unwrap();
    for r in rows.iter_mut().filter(|r| r.episode == Some(1)) {
        r.role = Some(Role::Val);
    }
    let prov = Provenance::new("test", "0", serde_json::json!({}), 0);
    for (rows, want) in [
        (rows, "holds no training case (only 5 validation"),
        (Vec::new(), "has no rows"),
    ] {
        clopa_table::write_split(&f.path("split.parquet"), &rows, &prov).unwrap();
        let out = f.cmd(1, "in", &f.path("x.safetensors")).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains("split.parquet") && err.contains(want), "{err}");
    }
}

#[test]
fn a_checkpoint_for_another_base_is_refused() {
    let f = Fixture::new();
    let bad = f.path("other.safetensors");
    let mut t = BTreeMap::new();
    t.insert(
        "encoder.stem.convs.0.norm.weight".to_string(),
        Tensor::ones(4, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let mut md = BTreeMap::new();
    md.insert(META_BASE_SHA256.to_string(), "0".repeat(64));
    md.insert(META_GROUP.to_string(), "in".to_string());
    clopa_nn::write_episode_checkpoint(&bad, &t, &md).unwrap();
    let out = f
        .cmd(2, "in", &f.path("x.safetensors"))
        .arg("--init")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("other.safetensors"), "{err}");
    // episode 2 without --init
    let out = f.cmd(2, "in", &f.path("x.safetensors")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr).unwrap().contains("--init"));
    assert!(!f.path("x.safetensors").exists());
}

#[test]
fn cuda_without_the_feature_is_a_clear_error_and_bad_devices_are_usage_errors() {
    let f = Fixture::new();
    let out = f.path("x.safetensors");
    let res = f
        .cmd(1, "in", &out)
        .args(["--device", "cuda"])
        .output()
        .unwrap();
    assert_eq!(res.status.code(), Some(1));
    let err = String::from_utf8(res.stderr).unwrap();
    assert!(
        err.contains("\"cuda\"") && err.contains("built without CUDA support"),
        "{err}"
    );
    assert!(!out.exists());
    let res = f
        .cmd(1, "in", &out)
        .args(["--device", "gpu"])
        .output()
        .unwrap();
    assert_eq!(res.status.code(), Some(2));
    assert!(!out.exists());
}

#[test]
fn a_bad_group_is_a_usage_error() {
    let f = Fixture::new();
    let out = f
        .cmd(1, "everything", &f.path("x.safetensors"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // a negative learning rate reaches the settings' check rather than clap's "unexpected
    // argument '-1'"
    let out = f
        .cmd(1, "in", &f.path("x.safetensors"))
        .args(["--lr", "-1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid training setting `lr` = -1"), "{err}");
    assert!(!f.path("x.safetensors").exists());
    // zero epochs, steps or patches would write the incoming model as if trained
    for flag in ["--epochs", "--steps-per-epoch", "--batch"] {
        let out = f
            .cmd(1, "in", &f.path("x.safetensors"))
            .args([flag, "0"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag) && err.contains("1.."), "{err}");
        assert!(!f.path("x.safetensors").exists());
    }
}

#[test]
fn the_thread_count_does_not_change_the_trained_weights() {
    // --seed repeats a run bit for bit on any machine: 1 and 3 threads train the same tensors
    // (the kernel gradients once summed in as many parts as threads: weights moved by ~1e-4).
    let f = Fixture::new();
    let train = |threads: &str| {
        let ck = f.path(&format!("t{threads}.safetensors"));
        f.cmd(1, "all", &ck)
            .args(["--threads", threads, "--patch", "20"])
            .assert()
            .success();
        clopa_nn::read_episode_checkpoint(&ck).unwrap()
    };
    let (one, three) = (train("1"), train("3"));
    assert_eq!(one.metadata, three.metadata);
    assert!(!one.tensors.is_empty());
    for (n, t) in &one.tensors {
        assert!(bits(t) == bits(&three.tensors[n]), "{n} differs");
    }
}

#[test]
fn episode_last_trains_a_specialist_on_the_whole_stream_from_the_base() {
    let f = Fixture::new();
    let ck = f.path("expert.safetensors");
    // the cmd's episode is overridden by the later `--episode last`
    f.cmd(1, "all", &ck)
        .args(["--episode", "last", "--no-prompts"])
        .assert()
        .success();
    let c = clopa_nn::read_episode_checkpoint(&ck).unwrap();
    assert_eq!(c.metadata["clopa.episode"], "2");
    assert_eq!(c.metadata["clopa.n_seen"], "6");
    assert_eq!(c.tensors.len(), spec().parameter_shapes().len());
    let out = f
        .cmd(1, "in", &f.path("x.safetensors"))
        .args(["--episode", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// What an episode learns from is part of its settings: a new split with the same counts, or a
/// retrained episode E − 1 behind --init, makes its checkpoint stale.
#[test]
fn a_new_split_or_a_retrained_init_makes_an_episode_stale() {
    let f = Fixture::new();
    let (ck1, ck2) = (f.path("out/ep1.safetensors"), f.path("out/ep2.safetensors"));
    let run = |episode: u32, out: &Path, args: &[&str]| -> String {
        let mut c = f.cmd(episode, "in", out);
        if episode == 2 {
            c.arg("--init").arg(&ck1);
        }
        let out = c.args(args).output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let trained = |e: &str| e.contains("selected epoch");
    assert!(trained(&run(1, &ck1, &[])));
    assert!(trained(&run(2, &ck2, &[])));
    let e = run(2, &ck2, &[]);
    assert!(e.contains("skipping") && !trained(&e), "{e}");
    // episode 1 trained again with another learning rate: episode 2 starts elsewhere now
    assert!(trained(&run(1, &ck1, &["--lr", "0.0005"])));
    let e = run(2, &ck2, &[]);
    assert!(e.contains("other settings") && trained(&e), "{e}");
    let e = run(2, &ck2, &[]);
    assert!(e.contains("skipping"), "{e}");
    // the validation case and a training case swap roles: same counts, other data
    f.write_split(0);
    let e = run(1, &ck1, &["--lr", "0.0005"]);
    assert!(e.contains("other settings") && trained(&e), "{e}");
    let c = clopa_nn::read_episode_checkpoint(&ck1).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&c.metadata["clopa.config"]).unwrap();
    assert_eq!(cfg["val_cases"], serde_json::json!(["toy_000"]));
    // a cached case's label rewritten (its time differs): other data, trained again once
    let label = f.path("data/toy/labelsTr/toy_002.nii.gz");
    let v = clopa_volume::read_labels(&label).unwrap();
    clopa_volume::write_nifti(&label, &v).unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    let file = std::fs::File::options().write(true).open(&label).unwrap();
    file.set_modified(old).unwrap();
    let e = run(1, &ck1, &["--lr", "0.0005"]);
    assert!(e.contains("other settings") && trained(&e), "{e}");
    let e = run(1, &ck1, &["--lr", "0.0005"]);
    assert!(e.contains("skipping"), "{e}");
    // the manifest edited in place: another NSD tolerance changes nothing training sees, the
    // largest-component filter changes the target
    let manifest = f.path("toy.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("nsd_tolerance_mm = 2.0", "nsd_tolerance_mm = 3.0"),
    )
    .unwrap();
    let e = run(1, &ck1, &["--lr", "0.0005"]);
    assert!(e.contains("skipping"), "{e}");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("largest_component = false", "largest_component = true"),
    )
    .unwrap();
    let e = run(1, &ck1, &["--lr", "0.0005"]);
    assert!(e.contains("other settings") && trained(&e), "{e}");
    let e = run(1, &ck1, &["--lr", "0.0005"]);
    assert!(e.contains("skipping"), "{e}");
}

#[test]
fn a_checkpoint_from_before_the_target_was_recorded_is_not_retrained() {
    let f = Fixture::new();
    let ck = f.path("out/ep1.safetensors");
    let out = f.cmd(1, "in", &ck).output().unwrap();
    assert!(out.status.success());
    // the checkpoint as an earlier version wrote it: the same settings without `target`
    let mut c = clopa_nn::read_episode_checkpoint(&ck).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&c.metadata["clopa.config"]).unwrap();
    assert!(cfg["target"]["labels"] == serde_json::json!([1]), "{cfg}");
    cfg.as_object_mut().unwrap().remove("target");
    c.metadata.insert("clopa.config".into(), cfg.to_string());
    clopa_nn::write_episode_checkpoint(&ck, &c.tensors, &c.metadata).unwrap();
    let out = f.cmd(1, "in", &ck).output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && e.contains("skipping"), "{e}");
}

#[test]
fn a_damaged_checkpoint_or_log_is_retrained_not_skipped() {
    let f = Fixture::new();
    let ck = f.path("out/ep1.safetensors");
    let log = f.path("out/ep1.log.parquet");
    f.cmd(1, "in", &ck).assert().success();
    for (damaged, why) in [
        (&log, "has a log that cannot be read"),
        (&ck, "cannot be read"),
    ] {
        let bytes = std::fs::read(damaged).unwrap();
        std::fs::write(damaged, &bytes[..bytes.len() / 2]).unwrap();
        let out = f.cmd(1, "in", &ck).output().unwrap();
        assert!(out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(why) && err.contains("retraining") && err.contains("selected epoch"),
            "{err}"
        );
        clopa_nn::read_episode_checkpoint(&ck).unwrap();
        assert_eq!(clopa_adapt::read_epoch_log(&log).unwrap().len(), 2);
    }
}

#[test]
fn a_rerun_with_other_settings_retrains_and_force_retrains_the_same_settings() {
    let f = Fixture::new();
    let ck = f.path("out/ep1.safetensors");
    f.cmd(1, "in", &ck).assert().success();
    let lr = |ck: &Path| -> f64 {
        let c = clopa_nn::read_episode_checkpoint(ck).unwrap();
        let cfg: serde_json::Value = serde_json::from_str(&c.metadata["clopa.config"]).unwrap();
        cfg["train"]["lr"].as_f64().unwrap()
    };
    let first = lr(&ck);
    // Other settings: the old checkpoint is stale, so the episode is trained again.
    let out = f
        .cmd(1, "in", &ck)
        .args(["--lr", "0.0005"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("other settings") && err.contains("selected epoch"),
        "{err}"
    );
    assert_eq!(lr(&ck), 0.0005);
    assert_ne!(first, 0.0005);
    // The same settings again: skipped; with --force: trained again.
    let out = f
        .cmd(1, "in", &ck)
        .args(["--lr", "0.0005"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("skipping") && !err.contains("selected epoch"),
        "{err}"
    );
    let out = f
        .cmd(1, "in", &ck)
        .args(["--lr", "0.0005", "--force"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("selected epoch"));
    // Another GPU precision is another setting (fp32, the default, is the same); an unknown one
    // is a usage error.
    let err = |args: &[&str]| {
        let out = f.cmd(1, "in", &ck).args(args).output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = err(&["--lr", "0.0005", "--precision", "fp32"]);
    assert!(e.contains("skipping"), "{e}");
    let e = err(&["--lr", "0.0005", "--precision", "bf16"]);
    assert!(
        e.contains("other settings") && e.contains("selected epoch"),
        "{e}"
    );
    let c = clopa_nn::read_episode_checkpoint(&ck).unwrap();
    assert!(c.metadata["clopa.config"].contains("\"precision\":\"bf16\""));
    let out = f.cmd(1, "in", &ck).args(["--precision", "fp8"]).output();
    assert_eq!(out.unwrap().status.code(), Some(2));
    // fp16 would underflow the gradients (no loss scaling): a usage error saying so, the
    // checkpoint untouched
    let before = std::fs::read(&ck).unwrap();
    let out = f
        .cmd(1, "in", &ck)
        .args(["--precision", "fp16"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("fp16") && e.contains("bf16"), "{e}");
    assert_eq!(std::fs::read(&ck).unwrap(), before);
}

#[test]
fn the_profiles_inference_precision_is_not_the_training_one() {
    // pipelines/paper.toml infers in fp16 and trains in fp32: a profile's `precision` is
    // clopa-simulate's, `train_precision` this tool's (fp16 would be refused here)
    let f = Fixture::new();
    let prof = clopa_config::Profile {
        val_patches: 2,
        precision: "fp16".into(),
        ..Default::default()
    };
    std::fs::write(f.path("profile.toml"), prof.to_toml_string().unwrap()).unwrap();
    let ck = f.path("ep1.safetensors");
    f.cmd(1, "in", &ck).assert().success();
    let c = clopa_nn::read_episode_checkpoint(&ck).unwrap();
    assert!(c.metadata["clopa.config"].contains("\"precision\":\"fp32\""));
}

#[test]
fn a_split_of_another_task_nan_weights_and_stdout_are_refused() {
    let f = Fixture::new();
    // A split whose rows belong to another task: exit 1 naming both tasks.
    let mut rows = clopa_table::read_split(&f.path("split.parquet")).unwrap();
    rows.iter_mut().for_each(|r| r.task = "other-task".into());
    let prov = Provenance::new("test", "0", serde_json::json!({}), 0);
    let other = f.path("other-split.parquet");
    clopa_table::write_split(&other, &rows, &prov).unwrap();
    let mut c = f.cmd(1, "in", &f.path("x/ep1.safetensors"));
    c.arg("--split").arg(&other);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("other-task") && err.contains("\"toy\""),
        "{err}"
    );
    assert!(!f.path("x").exists());

    // An --init checkpoint with NaN weights: exit 1 naming the file and the tensor.
    let sha = clopa_nn::sha256_file(&f.path("model/model.safetensors")).unwrap();
    let mut t = BTreeMap::new();
    t.insert(
        "encoder.stem.convs.0.norm.weight".to_string(),
        Tensor::new(&[1f32, f32::NAN, 1.0, 1.0], &Device::Cpu).unwrap(),
    );
    let md = BTreeMap::from([
        (META_BASE_SHA256.to_string(), sha),
        (META_GROUP.to_string(), "in".to_string()),
    ]);
    let nan = f.path("nan.safetensors");
    clopa_nn::write_episode_checkpoint(&nan, &t, &md).unwrap();
    let out = f
        .cmd(2, "in", &f.path("x/ep2.safetensors"))
        .arg("--init")
        .arg(&nan)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nan.safetensors") && err.contains("non-finite"),
        "{err}"
    );
    assert!(!f.path("x").exists());

    // A checkpoint with a log beside it cannot go to stdout: a usage error, no file `-`.
    let out = f.cmd(1, "in", Path::new("-")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_constant_image_is_refused_naming_the_file() {
    // z-score normalisation would divide by zero: exit 1 naming the image file, nothing written
    let f = Fixture::new();
    let p = f.path("data/toy/imagesTr/toy_001.nii.gz");
    let mut v = clopa_volume::read_image(&p, 0).unwrap();
    v.data.fill(7.0);
    clopa_volume::write_nifti(&p, &v).unwrap();
    let ck = f.path("out/ep1.safetensors");
    let out = f.cmd(1, "in", &ck).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("imagesTr/toy_001.nii.gz") && err.contains("constant"),
        "{err}"
    );
    assert!(!ck.exists());
}
