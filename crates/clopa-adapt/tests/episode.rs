//! Episode-level tests on a tiny 3-stage model (features 4-8-16) and 20³ ball cases.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use clopa_adapt::{
    AugmentConfig, EpisodeConfig, LoopConfig, Patch, TrainCase, interaction_loop, train_episode,
};
use clopa_interact::PromptConfig;
use clopa_nn::{ParamGroup, ParamStore, ResidualEncoderUNet, UNetSpec};

fn spec() -> UNetSpec {
    clopa_testkit::tiny_spec()
}

fn weights(spec: &UNetSpec, seed: u64) -> BTreeMap<String, Tensor> {
    clopa_testkit::random_weights(spec, seed)
}

/// A 20³ case: a bright ball of radius 4 at a case-dependent centre, textured background
/// (normalised intensities).
fn ball_case(k: usize) -> TrainCase {
    let vox = clopa_testkit::ball_voxels(clopa_testkit::ball_centre(k));
    let img = vox
        .iter()
        .map(|v| if v.inside { 1.5 } else { -0.5 } + v.texture * 0.1)
        .collect();
    let m = vox.iter().map(|v| u8::from(v.inside)).collect();
    TrainCase::from_normalised(&format!("ball{k}"), clopa_testkit::BALL_SHAPE, img, m)
}

fn cfg() -> EpisodeConfig {
    EpisodeConfig {
        patch: [16; 3],
        batch: 2,
        lr: 1e-2,
        epochs: 1,
        steps_per_epoch: 2,
        edits: 2,
        val_patches: 2,
        seed: 7,
        ..EpisodeConfig::default()
    }
}

fn prompt() -> PromptConfig {
    PromptConfig::nninteractive_v1()
}

fn store(group: ParamGroup) -> (UNetSpec, BTreeMap<String, Tensor>, ParamStore) {
    let spec = spec();
    let w = weights(&spec, 1);
    let mut p = ParamStore::new(w.clone());
    p.make_trainable(group.names(&spec)).unwrap();
    (spec, w, p)
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

#[test]
fn exactly_the_groups_tensors_change() {
    for group in [ParamGroup::In, ParamGroup::Cn] {
        let (spec, before, mut params) = store(group);
        let train: Vec<_> = (0..3).map(ball_case).collect();
        // no validation cases: the last epoch is selected, so training must show
        let out = train_episode(
            &spec,
            &mut params,
            &prompt(),
            &train,
            &[],
            &cfg(),
            &Device::Cpu,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(out.selected_epoch, 1);
        let names: BTreeSet<String> = group.names(&spec).into_iter().collect();
        assert_eq!(out.selected.keys().cloned().collect::<BTreeSet<_>>(), names);
        let after = params.tensors();
        for (n, t) in &before {
            let same = bits(t) == bits(&after[n]);
            assert_eq!(same, !names.contains(n), "{group:?}: {n} changed={}", !same);
        }
    }
}

#[test]
fn in_and_cn_hold_the_tensors_design_lists() {
    let spec = spec();
    let all: Vec<String> = spec
        .parameter_shapes()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let norms: BTreeSet<String> = all
        .iter()
        .filter(|n| n.ends_with(".norm.weight") || n.ends_with(".norm.bias"))
        .cloned()
        .collect();
    let inn: BTreeSet<String> = ParamGroup::In.names(&spec).into_iter().collect();
    assert_eq!(inn, norms);
    let mut cn = norms.clone();
    for n in [
        "encoder.stem.convs.0.conv.weight",
        "encoder.stem.convs.0.conv.bias",
        "decoder.seg_layers.1.weight",
        "decoder.seg_layers.1.bias",
    ] {
        cn.insert(n.to_string());
    }
    assert_eq!(
        ParamGroup::Cn
            .names(&spec)
            .into_iter()
            .collect::<BTreeSet<_>>(),
        cn
    );
}

#[test]
fn the_same_seed_gives_a_bit_identical_result_and_another_seed_does_not() {
    let run = |seed: u64| {
        let (spec, _, mut params) = store(ParamGroup::Cn);
        let train: Vec<_> = (0..3).map(ball_case).collect();
        let val = vec![ball_case(5)];
        let c = EpisodeConfig { seed, ..cfg() };
        let out = train_episode(
            &spec,
            &mut params,
            &prompt(),
            &train,
            &val,
            &c,
            &Device::Cpu,
            &mut |_| {},
        )
        .unwrap();
        let losses: Vec<u64> = out
            .log
            .iter()
            .filter_map(|r| r.train_loss)
            .map(f64::to_bits)
            .collect();
        let t: Vec<Vec<u32>> = params.trainable_tensors().values().map(bits).collect();
        (t, losses)
    };
    let a = run(3);
    assert_eq!(a, run(3));
    assert_ne!(a.1, run(4).1);
}

#[test]
fn selection_keeps_the_incoming_model_when_no_epoch_improves() {
    let (spec, before, mut params) = store(ParamGroup::In);
    let train: Vec<_> = (0..2).map(ball_case).collect();
    let val = vec![ball_case(4), ball_case(6)];
    let c = EpisodeConfig {
        lr: 0.0,
        epochs: 2,
        ..cfg()
    };
    let mut validated = 0;
    let out = train_episode(
        &spec,
        &mut params,
        &prompt(),
        &train,
        &val,
        &c,
        &Device::Cpu,
        &mut |p| {
            if matches!(p, clopa_adapt::Progress::Validated { .. }) {
                validated += 1;
            }
        },
    )
    .unwrap();
    assert_eq!(validated, 3, "epoch 0 and every epoch are validated");
    assert_eq!(out.selected_epoch, 0);
    assert_eq!(out.log.len(), 3);
    assert!(out.log[0].selected && !out.log[1].selected && !out.log[2].selected);
    // every epoch saw the same validation patches and clicks: identical scores
    assert_eq!(out.log[0].val_score, out.log[2].val_score);
    assert_eq!(out.log[1].val_ema, out.log[0].val_score);
    for (n, t) in params.tensors() {
        assert_eq!(bits(&t), bits(&before[&n]), "{n}");
    }
}

#[test]
fn a_solved_patch_leaves_the_loop_and_the_others_go_on() {
    let spec = spec();
    let mut w = weights(&spec, 2);
    // seg head: zero weights, bias (10, -10): every voxel predicted background
    for n in ["decoder.seg_layers.1.weight", "decoder.seg_layers.1.bias"] {
        let t = &w[n];
        let v = if n.ends_with("bias") {
            Tensor::new(&[10f32, -10.0], &Device::Cpu).unwrap()
        } else {
            t.zeros_like().unwrap()
        };
        w.insert(n.to_string(), v);
    }
    let params = ParamStore::new(w);
    let net = ResidualEncoderUNet::new(&spec, &params.var_builder(&Device::Cpu)).unwrap();
    let n = 16 * 16 * 16;
    let empty = Patch {
        shape: [16; 3],
        image: vec![0.1; n],
        label: vec![0; n],
    };
    let mut label = vec![0u8; n];
    label[(8 * 16 + 8) * 16 + 8] = 1;
    let fg = Patch {
        shape: [16; 3],
        image: vec![0.1; n],
        label,
    };
    let lcfg = LoopConfig {
        edits: 5,
        prompts: true,
        prompt: prompt(),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let out = interaction_loop(&net, &[empty, fg], &lcfg, &mut rng, &Device::Cpu, None).unwrap();
    assert_eq!(out.active, vec![2, 1, 1, 1, 1, 1]);
    assert_eq!(out.dice[0], vec![1.0]);
    assert_eq!(out.dice[1], vec![0.0; 6]);
    assert_eq!(out.dice_auc(), vec![1.0, 0.0]);
    // without prompts: a single pass
    let lcfg = LoopConfig {
        prompts: false,
        ..lcfg
    };
    let out = interaction_loop(&net, &[fg_clone()], &lcfg, &mut rng, &Device::Cpu, None).unwrap();
    assert_eq!(out.active, vec![1]);
}

fn fg_clone() -> Patch {
    let n = 16 * 16 * 16;
    let mut label = vec![0u8; n];
    label[0] = 1;
    Patch {
        shape: [16; 3],
        image: vec![0.0; n],
        label,
    }
}

#[test]
fn augmentation_off_and_on_differ_but_both_train() {
    let (spec, _, mut params) = store(ParamGroup::In);
    let train: Vec<_> = (0..2).map(ball_case).collect();
    let c = EpisodeConfig {
        augment: AugmentConfig::none(),
        ..cfg()
    };
    let a = train_episode(
        &spec,
        &mut params,
        &prompt(),
        &train,
        &[],
        &c,
        &Device::Cpu,
        &mut |_| {},
    )
    .unwrap();
    assert!(a.log[1].train_loss.unwrap().is_finite());
}
