//! CLI tests of `clopa-model` and `clopa-import` on the ResidualEncoderUNet fixture
//! (`crates/clopa-nn/tests/fixtures/resenc`).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../crates/clopa-nn/tests/fixtures/resenc")
        .join(name)
}

fn model_cmd() -> Command {
    Command::cargo_bin("clopa-model").unwrap()
}

fn import_cmd() -> Command {
    Command::cargo_bin("clopa-import").unwrap()
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// An nnInteractive-style folder with the fixture's plans but the real v1.0 arch_kwargs, no checkpoint.
fn write_v1_folder(dir: &Path) {
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("config.json")).unwrap()).unwrap();
    let src = fixture("model_folder");
    let mut plans: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("plans.json")).unwrap()).unwrap();
    plans["configurations"]["3d_fullres_ps192_bs24"]["architecture"]["arch_kwargs"] =
        config["real_nninteractive_v1"]["arch_kwargs"].clone();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("plans.json"),
        serde_json::to_string_pretty(&plans).unwrap(),
    )
    .unwrap();
    for f in ["dataset.json", "inference_session_class.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
}

#[test]
fn info_json_on_the_real_v1_architecture_gives_the_reference_counts() {
    let tmp = tempfile::tempdir().unwrap();
    write_v1_folder(&tmp.path().join("v1"));
    let out = model_cmd()
        .current_dir(tmp.path())
        .args(["info", "v1", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"total": 102_355_818, "groups": {"in": 27_648, "cn": 34_658, "all": 102_355_818}})
    );
    let out = model_cmd()
        .current_dir(tmp.path())
        .args(["info", "v1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    insta::assert_snapshot!("info_text_v1", String::from_utf8(out.stdout).unwrap());
}

#[test]
fn import_then_forward_reproduces_the_fixture_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    let out = import_cmd()
        .arg(fixture("model_folder"))
        .arg("-o")
        .arg(&model)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(model.join("model.json").is_file() && model.join("model.safetensors").is_file());
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("model.json")).unwrap()).unwrap();
    assert_eq!(meta["input_channels"], 8);
    assert_eq!(meta["patch_size"], serde_json::json!([192, 192, 192]));
    assert_eq!(meta["decay_scheme"], "per_type");
    assert_eq!(meta["interaction_decay"], 0.98);
    assert_eq!(meta["source"]["configuration"], "3d_fullres_ps192_bs24");

    // info on the clopa folder agrees with the fixture's parameter count.
    let out = model_cmd()
        .args(["info", "--json"])
        .arg(&model)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["total"], 155_456);

    let logits_path = tmp.path().join("logits.safetensors");
    let out = model_cmd()
        .arg("forward")
        .arg(&model)
        .arg("--input")
        .arg(fixture("io_input.safetensors"))
        .arg("-o")
        .arg(&logits_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let got = candle_core::safetensors::load(&logits_path, &Device::Cpu).unwrap();
    let want = candle_core::safetensors::load(fixture("io.safetensors"), &Device::Cpu).unwrap();
    let (g, w) = (&got["logits"], &want["logits"]);
    assert_eq!(g.dtype(), DType::F32);
    assert_eq!(g.dims(), w.dims());
    let err = (g - w)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = w
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(err <= 1e-4 * scale, "logits err {err} vs max {scale}");
}

#[test]
fn forward_with_the_wrong_channel_count_fails_naming_both() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    assert!(
        import_cmd()
            .arg(fixture("model_folder"))
            .arg("-o")
            .arg(&model)
            .output()
            .unwrap()
            .status
            .success()
    );
    let x = Tensor::zeros((1, 3, 32, 32, 32), DType::F32, &Device::Cpu).unwrap();
    x.save_safetensors("x", tmp.path().join("x3.safetensors"))
        .unwrap();
    let out = model_cmd()
        .current_dir(tmp.path())
        .args([
            "forward",
            "-q",
            "model",
            "--input",
            "x3.safetensors",
            "-o",
            "y.safetensors",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("forward_wrong_channels", stderr_of(&out));
    assert!(!tmp.path().join("y.safetensors").exists());

    // a device this build has not got is named, before any work; a bad name is a usage error
    let forward = |device: &str| {
        model_cmd()
            .current_dir(tmp.path())
            .args(["forward", "-q", "model", "--input", "x3.safetensors"])
            .args(["-o", "y.safetensors", "--device", device])
            .output()
            .unwrap()
    };
    if !clopa_nn::CUDA_BUILT {
        let out = forward("cuda:0");
        assert_eq!(out.status.code(), Some(1));
        let err = stderr_of(&out);
        assert!(
            err.contains("\"cuda:0\"") && err.contains("--features cuda"),
            "{err}"
        );
    }
    assert_eq!(forward("gpu").status.code(), Some(2));
    assert!(!tmp.path().join("y.safetensors").exists());

    // NaN in the input is refused, not turned into NaN logits
    let mut v = vec![0f32; 8 * 32 * 32 * 32];
    v[77] = f32::NAN;
    let x = Tensor::from_vec(v, (1, 8, 32, 32, 32), &Device::Cpu).unwrap();
    x.save_safetensors("x", tmp.path().join("nan.safetensors"))
        .unwrap();
    let out = model_cmd()
        .current_dir(tmp.path())
        .args(["forward", "-q", "model", "--input", "nan.safetensors"])
        .args(["-o", "y.safetensors"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.contains("nan.safetensors") && err.contains("NaN at flat index 77"),
        "{err}"
    );
    assert!(!tmp.path().join("y.safetensors").exists());
}

#[test]
fn import_errors_exit_1_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    // No plans.json.
    std::fs::create_dir(tmp.path().join("empty")).unwrap();
    let out = import_cmd()
        .current_dir(tmp.path())
        .args(["empty", "-o", "out"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("import_no_plans", stderr_of(&out));

    // A truncated checkpoint.
    let bad = tmp.path().join("bad");
    write_v1_folder(&bad);
    std::fs::copy(fixture("model_folder/plans.json"), bad.join("plans.json")).unwrap();
    std::fs::create_dir(bad.join("fold_0")).unwrap();
    let bytes = std::fs::read(fixture("model_folder/fold_0/checkpoint_final.pth")).unwrap();
    std::fs::write(
        bad.join("fold_0/checkpoint_final.pth"),
        &bytes[..bytes.len() - 1000],
    )
    .unwrap();
    let out = import_cmd()
        .current_dir(tmp.path())
        .args(["bad", "-o", "out"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("import_truncated", stderr_of(&out));
    assert!(!tmp.path().join("out").join("model.json").exists());

    // A checkpoint that does not match the plans (the real v1.0 widths).
    std::fs::write(bad.join("fold_0/checkpoint_final.pth"), &bytes).unwrap();
    write_v1_folder(&bad);
    let out = import_cmd()
        .current_dir(tmp.path())
        .args(["bad", "-o", "out"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("import_shape_mismatch", stderr_of(&out));

    // info on something that is not a model folder.
    let out = model_cmd()
        .current_dir(tmp.path())
        .args(["info", "empty"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("info_not_a_model_folder", stderr_of(&out));
}

#[test]
fn usage_errors_exit_2() {
    let out = model_cmd().args(["forward", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = import_cmd().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // init's arguments that do not fit together are usage errors too, nothing written
    let tmp = tempfile::tempdir().unwrap();
    for (args, want) in [
        (
            &["--patch", "15"][..],
            "multiple of the network's total stride",
        ),
        (
            &["--features", "8,16", "--stages", "4", "--patch", "16"][..],
            "--features",
        ),
        // a typo'd size would end in an allocation failure of the tools that use the model
        (&["--patch", "1000000"][..], "larger than clopa takes (512)"),
    ] {
        let out = model_cmd()
            .arg("init")
            .args(args)
            .arg("-o")
            .arg(tmp.path().join("m"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr_of(&out).contains(want), "{}", stderr_of(&out));
        // the usage line shown is init's, not the top-level `clopa-model <COMMAND>`
        assert!(
            stderr_of(&out).contains("Usage: clopa-model init "),
            "{}",
            stderr_of(&out)
        );
        assert!(!tmp.path().join("m").exists());
    }
    // a value that is no cube side: clap's own usage error, with the reason
    for bad in ["30,32,32", "-32"] {
        let out = model_cmd()
            .args(["init", "--patch", bad, "-o"])
            .arg(tmp.path().join("m"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(
            stderr_of(&out).contains("the side of a cubic patch"),
            "{}",
            stderr_of(&out)
        );
    }
}

#[test]
fn help_texts() {
    for (name, mut cmd, args) in [
        ("help_model", model_cmd(), vec!["--help"]),
        ("help_model_info", model_cmd(), vec!["info", "--help"]),
        ("help_model_forward", model_cmd(), vec!["forward", "--help"]),
        ("help_import", import_cmd(), vec!["--help"]),
    ] {
        let out = cmd.args(&args).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Example"), "{name}");
        insta::assert_snapshot!(name, text);
    }
}

fn sha(path: &Path) -> String {
    clopa_nn::model_folder::sha256_file(path).unwrap()
}

#[test]
fn init_is_seeded_and_loads_with_the_requested_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let init = |seed: &str, dir: &str| {
        model_cmd()
            .current_dir(tmp.path())
            .args([
                "init", "--arch", "tiny", "--patch", "48", "--seed", seed, "-o", dir,
            ])
            .output()
            .unwrap()
    };
    for (seed, dir) in [("0", "a"), ("0", "b"), ("1", "c")] {
        let out = init(seed, dir);
        assert!(out.status.success(), "{}", stderr_of(&out));
    }
    let w = |d: &str| sha(&tmp.path().join(d).join("model.safetensors"));
    assert_eq!(w("a"), w("b"));
    assert_ne!(w("a"), w("c"));
    let m = clopa_nn::load_model_folder(&tmp.path().join("a")).unwrap();
    assert_eq!(m.spec.features, vec![8, 16, 32, 64]);
    assert_eq!(m.spec.n_blocks, vec![1, 2, 2, 2]);
    assert_eq!(m.spec.input_channels, 8);
    assert_eq!(m.spec.num_classes, 2);
    assert_eq!(m.meta.patch_size, vec![48, 48, 48]);
    // The network runs on it and gives finite logits of the right shape.
    let x = Tensor::randn(0f32, 1., (1, 8, 16, 16, 16), &Device::Cpu).unwrap();
    let y = m.network(&Device::Cpu).unwrap().forward(&x).unwrap();
    assert_eq!(y.dims(), &[1, 2, 16, 16, 16]);
    let s: f32 = y.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
    assert!(s.is_finite() && s > 0.0);

    let out = model_cmd()
        .current_dir(tmp.path())
        .args(["init", "--features", "4,8,16", "--patch", "16", "-o", "d"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let m = clopa_nn::load_model_folder(&tmp.path().join("d")).unwrap();
    assert_eq!(m.spec.features, vec![4, 8, 16]);

    // A patch the network cannot take: a usage error naming the value.
    let out = init("0", "e");
    assert!(out.status.success());
    let out = model_cmd()
        .current_dir(tmp.path())
        .args(["init", "--arch", "tiny", "--patch", "44", "-o", "f"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("--patch 44"),
        "{}",
        stderr_of(&out)
    );
    assert!(!tmp.path().join("f").exists());
}

#[test]
fn bake_folds_checkpoints_into_a_new_model() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let out = model_cmd()
        .args(["init", "--features", "4,8", "--patch", "8", "-o"])
        .arg(&base)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let base_sha = sha(&base.join("model.safetensors"));
    let base_model = clopa_nn::load_model_folder(&base).unwrap();
    // a checkpoint holds every tensor of its group (clopa-nn refuses one that does not)
    let write_ck = |name: &str, value: f32, base_sha: &str, episode: u32| {
        let mut t = base_model.group_tensors(clopa_nn::ParamGroup::In);
        t.insert(
            "encoder.stem.convs.0.norm.weight".to_string(),
            Tensor::full(value, 4, &Device::Cpu).unwrap(),
        );
        let mut md = std::collections::BTreeMap::new();
        md.insert("clopa.base_sha256".to_string(), base_sha.to_string());
        md.insert("clopa.group".to_string(), "in".to_string());
        md.insert("clopa.episode".to_string(), episode.to_string());
        let p = tmp.path().join(name);
        clopa_nn::model_folder::write_episode_checkpoint(&p, &t, &md).unwrap();
        p
    };
    let ep1 = write_ck("ep1.safetensors", 2.0, &base_sha, 1);
    let ep2 = write_ck("ep2.safetensors", 3.0, &base_sha, 2);
    let baked = tmp.path().join("baked");
    let out = model_cmd()
        .arg("bake")
        .arg(&base)
        .arg("--checkpoint")
        .arg(&ep1)
        .arg("--checkpoint")
        .arg(&ep2)
        .arg("-o")
        .arg(&baked)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let m = clopa_nn::load_model_folder(&baked).unwrap();
    assert_ne!(m.weights_sha256, base_sha);
    // The later checkpoint wins; everything else is the base's.
    let w: Vec<f32> = m.tensors["encoder.stem.convs.0.norm.weight"]
        .to_vec1()
        .unwrap();
    assert_eq!(w, vec![3.0; 4]);
    let b = clopa_nn::load_model_folder(&base).unwrap();
    let name = "decoder.seg_layers.0.weight";
    let flat = |m: &clopa_nn::ModelFolder| -> Vec<f32> {
        m.tensors[name].flatten_all().unwrap().to_vec1().unwrap()
    };
    assert_eq!(flat(&m), flat(&b));
    assert_eq!(m.meta.source["base"]["sha256"], base_sha);
    assert_eq!(m.meta.source["checkpoints"].as_array().unwrap().len(), 2);

    // A checkpoint of the baked model does not apply to the base: exit 1 naming it.
    let foreign = write_ck("foreign.safetensors", 4.0, &m.weights_sha256, 1);
    let out = model_cmd()
        .arg("bake")
        .arg(&base)
        .arg("--checkpoint")
        .arg(&foreign)
        .arg("-o")
        .arg(tmp.path().join("x"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("foreign.safetensors"),
        "{}",
        stderr_of(&out)
    );
    assert!(!tmp.path().join("x").exists());
    // Nor does a chain out of order (or one checkpoint twice): exit 1 naming the later one.
    for chain in [[&ep2, &ep1], [&ep1, &ep1]] {
        let out = model_cmd()
            .arg("bake")
            .arg(&base)
            .arg("--checkpoint")
            .arg(chain[0])
            .arg("--checkpoint")
            .arg(chain[1])
            .arg("-o")
            .arg(tmp.path().join("z"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = stderr_of(&out);
        assert!(
            err.contains("ascending order") && err.contains("ep1"),
            "{err}"
        );
        assert!(!tmp.path().join("z").exists());
    }
    // No checkpoint at all is a usage error.
    let out = model_cmd()
        .arg("bake")
        .arg(&base)
        .arg("-o")
        .arg(tmp.path().join("y"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn an_existing_model_folder_is_not_overwritten_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let init = |seed: &str, extra: &[&str]| {
        model_cmd()
            .current_dir(tmp.path())
            .args(["init", "--features", "4,8", "--patch", "8", "--seed", seed])
            .args(extra)
            .args(["-o", "m"])
            .output()
            .unwrap()
    };
    assert!(init("0", &[]).status.success());
    let before = sha(&tmp.path().join("m/model.safetensors"));
    // A second init into the same folder: exit 1 naming it, the weights untouched.
    let out = init("1", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("is not empty") && stderr_of(&out).contains("--force"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(sha(&tmp.path().join("m/model.safetensors")), before);
    // bake and import refuse it too.
    let out = model_cmd()
        .current_dir(tmp.path())
        .args(["bake", "m", "--checkpoint", "none.safetensors", "-o", "m"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let out = import_cmd()
        .arg(fixture("model_folder"))
        .arg("-o")
        .arg(tmp.path().join("m"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert_eq!(sha(&tmp.path().join("m/model.safetensors")), before);
    // --force replaces it.
    let out = init("1", &["--force"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_ne!(sha(&tmp.path().join("m/model.safetensors")), before);
    // A model folder cannot be stdout: a usage error, no file named `-`.
    let out = model_cmd()
        .current_dir(tmp.path())
        .args(["init", "--patch", "48", "-o", "-"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!tmp.path().join("-").exists());
}
