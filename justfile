# clopa task runner. `just --list` shows the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Where datasets live (MSD tasks and the synthetic ones `just reproduce` generates).
export CLOPA_DATA := env_var_or_default("CLOPA_DATA", justfile_directory() / "data")

default:
    @just --list

# Run every test (the command CI runs).
test:
    cargo test --workspace --locked

# The other recipes start with this, so they share one build: building a subset of the tools would
# resolve features differently and rebuild shared crates.
# Build every tool in release mode.
build:
    cargo build --release --workspace --bins --locked

# The GPU build (`--features cuda`) from PyPI's CUDA 13.0 wheels, into target/cuda (`--all`: every
# tool, for `target/cuda/release/clopa-reproduce --profile pipelines/paper.toml`); see the script.
# Build the CUDA tools and the GPU check (no CUDA install needed; about 15 min on 2 cores).
build-cuda *args:
    scripts/build-cuda.sh {{args}}

# On a GPU machine, after `just build-cuda` (or with its target/cuda-check carried there): the
# network, its training step and the tools on the GPU against the CPU and PyTorch, in a few minutes;
# results under $OUT (default /tmp/gpu-check and /tmp/gpu-tools-check). See BENCHMARKS.md.
# Check a CUDA build on this machine's GPU against its CPU and PyTorch.
gpu-check:
    bash scripts/gpu-tools-check.sh
    bash scripts/gpu-check.sh

# Benchmarks (numbers go to BENCHMARKS.md; see there for the PyTorch side).
# Each example's arguments are in its top comment (without any it runs its default cases); the
# PyTorch / surface-distance counterparts are in scripts/.
# Benchmarks against the references (see BENCHMARKS.md for the commands of each side).
bench:
    cargo build --release -p clopa-nn -p clopa-metrics -p clopa-interact -p clopa-simulate --examples
    RAYON_NUM_THREADS=2 ./target/release/examples/bench_ops
    RAYON_NUM_THREADS=2 ./target/release/examples/bench_network
    RAYON_NUM_THREADS=2 ./target/release/examples/bench_loss
    RAYON_NUM_THREADS=2 ./target/release/examples/bench_prompts
    RAYON_NUM_THREADS=2 ./target/release/examples/bench_session tiny autozoom 5

# Generate the quick profile's synthetic datasets under $CLOPA_DATA/synth/ (clopa-reproduce does
# this itself; the settings must match pipelines/quick.toml's [synth] table or clopa-synth refuses).
# Generate the synthetic datasets under $CLOPA_DATA/synth/.
synth: build
    #!/usr/bin/env bash
    set -euo pipefail
    for kind in vessels organ small lesion; do
      ./target/release/clopa-synth --task "$kind" --cases 40 --seed 0 --size 64,64,64 -o "$CLOPA_DATA/synth/$kind"
    done

# The whole protocol for a profile: synth -> split -> simulate (base) -> train episodes (in, cn)
# -> simulate -> eval -> rank, into runs/<profile>/ (table2.md, table3.md, fig2.png, ...).
# Finished steps are skipped, so an interrupted run resumes. The synthetic profiles write their
# datasets into $CLOPA_DATA/synth/ (tiny into $CLOPA_DATA/tiny/synth/, its images are smaller).
# Run the whole protocol of a profile into runs/<profile>/ (quick: about 8 min on 2 cores).
reproduce profile="quick": build
    #!/usr/bin/env bash
    set -euo pipefail
    # tiny generates smaller images under the same dataset names as quick: keep them apart
    root="$CLOPA_DATA"; if [ "{{profile}}" = tiny ]; then root="$CLOPA_DATA/tiny"; fi
    ./target/release/clopa-reproduce --profile pipelines/{{profile}}.toml -o runs/{{profile}} --data-root "$root"

# Pretrain the embedded base model models/clopa-tiny (pipelines/pretrain.toml: every parameter of a
# random tiny ResidualEncoderUNet on the `generic` synthetic family in four stages, about 75 minutes on 2 cores),
# then print its zero-shot scores (`just zero-shot`).
# Pretrain models/clopa-tiny from scratch (about 75 min on 2 cores).
pretrain: build
    #!/usr/bin/env bash
    set -euo pipefail
    b=./target/release; out=runs/pretrain; p=pipelines/pretrain.toml
    m=data-manifests/synth-generic.toml
    mkdir -p "$out"
    $b/clopa-synth --task generic --cases 50 --seed 0 --size 64,64,64 -o "$CLOPA_DATA/synth/generic"
    [ -f "$out/init/model.json" ] || $b/clopa-model init --arch tiny --patch 48 --seed 0 -o "$out/init"
    $b/clopa-split "$m" --profile "$p" -o "$out/split.parquet"
    # Stage 1: the profile's 4 x 25 steps with 2 edit passes.
    /usr/bin/time -v $b/clopa-train-episode --model "$out/init" --manifest "$m" --split "$out/split.parquet" \
        --run 0 --episode 1 --group all --profile "$p" -o "$out/ep1.safetensors"
    # A stage is baked again (--force) when its checkpoint is newer, i.e. was retrained.
    [ "$out/stage1/model.json" -nt "$out/ep1.safetensors" ] ||
      $b/clopa-model bake "$out/init" --checkpoint "$out/ep1.safetensors" -o "$out/stage1" --force
    # Stage 2: 6 x 30 more steps with 3 edit passes, warm-started from stage 1.
    /usr/bin/time -v $b/clopa-train-episode --model "$out/stage1" --manifest "$m" --split "$out/split.parquet" \
        --run 0 --episode 1 --group all --profile "$p" --epochs 6 --steps-per-epoch 30 --edits 3 \
        -o "$out/stage2.safetensors"
    [ "$out/stage2/model.json" -nt "$out/stage2.safetensors" ] ||
      $b/clopa-model bake "$out/stage1" --checkpoint "$out/stage2.safetensors" -o "$out/stage2" --force
    # Stages 3 and 4: 12 x 50 more steps each with 5 edit passes (as CLoPA episodes) on cheaper 32^3
    # patches, new seeds.
    prev=stage2
    for stage in 3 4; do
      /usr/bin/time -v $b/clopa-train-episode --model "$out/$prev" --manifest "$m" --split "$out/split.parquet" \
          --run 0 --episode 1 --group all --profile "$p" --epochs 12 --steps-per-epoch 50 --edits 5 \
          --patch 32 --seed $stage -o "$out/stage$stage.safetensors"
      [ "$out/stage$stage/model.json" -nt "$out/stage$stage.safetensors" ] ||
        $b/clopa-model bake "$out/$prev" --checkpoint "$out/stage$stage.safetensors" -o "$out/stage$stage" --force
      prev=stage$stage
    done
    cp "$out/stage4/model.json" "$out/stage4/model.safetensors" models/clopa-tiny/   # README.md stays
    just zero-shot

# Expert thresholds of the synthetic tasks, derived as the paper derives its thresholds (the mean holdout
# Dice of an automatic model trained on the task's training half): per task a specialist (every parameter,
# no prompts, warm-started from models/clopa-tiny to spare CPU time) trained on run 0's final cache (the training half up to its last episode), then
# scored by prompt-free sliding-window prediction on every holdout case (patch 48^3 as the model predicts). Writes `expert_dice` into
# data-manifests/synth-<kind>.toml.
# Derive the synthetic tasks' expert thresholds from specialists (about 15 min on 2 cores).
expert-thresholds epochs="10" steps="30": build
    #!/usr/bin/env bash
    set -euo pipefail
    b=./target/release; out=runs/experts; p=pipelines/quick.toml
    just synth
    for kind in vessels organ small lesion; do
      m=data-manifests/synth-$kind.toml; d="$out/synth-$kind"; mkdir -p "$d"
      # every holdout case is scored (the profile evaluates only its first max_holdout)
      $b/clopa-split "$m" --profile "$p" --set max_holdout=100000 -o "$d/split.parquet" -q
      $b/clopa-train-episode --model models/clopa-tiny --manifest "$m" --split "$d/split.parquet" \
          --run 0 --episode last --group all --no-prompts --profile "$p" --patch 48 \
          --epochs {{epochs}} --steps-per-epoch {{steps}} -o "$d/specialist.safetensors"
      line=$($b/clopa-simulate --model models/clopa-tiny --checkpoint "$d/specialist.safetensors" \
          --manifest "$m" --split "$d/split.parquet" --automatic --method expert -q -o "$d/holdout.parquet")
      echo "$line"
      dice=$(sed -E 's/.*mean Dice ([0-9.]+) over.*/\1/' <<<"$line")
      sed -i -E "s/^expert_dice = [0-9.]+/expert_dice = $dice/" "$m"
    done

# Zero-shot scores of models/clopa-tiny (no adaptation) on every synthetic family: the generic
# holdout of pretraining and the quick profile's holdout of the four task families.
# Zero-shot scores of models/clopa-tiny on every synthetic family.
zero-shot: build
    #!/usr/bin/env bash
    set -euo pipefail
    b=./target/release; out=runs/zero-shot
    just synth
    for kind in generic vessels organ small lesion; do
      m=data-manifests/synth-$kind.toml
      p=pipelines/quick.toml; split="$out/synth-$kind/split.parquet"
      if [ "$kind" = generic ]; then p=pipelines/pretrain.toml; fi
      $b/clopa-split "$m" --profile "$p" -o "$split" -q
      $b/clopa-simulate --model models/clopa-tiny --manifest "$m" --split "$split" \
          --profile pipelines/quick.toml -o "$out/synth-$kind/steps.parquet" -q
      $b/clopa-eval "$out/synth-$kind/steps.parquet" --manifest "$m" -o "$out/synth-$kind/eval" -q
      $b/clopa-rank "$out/synth-$kind/eval/cases.parquet" -o "$out/synth-$kind/rank" -q
      sed -n '/^| synth/p' "$out/synth-$kind/rank/table2.md"
    done
