# clopa task runner. `just --list` shows the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Where datasets live (MSD tasks and the synthetic ones `just reproduce` generates).
export CLOPA_DATA := env_var_or_default("CLOPA_DATA", justfile_directory() / "data")

default:
    @just --list

# Run every test (the command CI runs).
test:
    cargo test --workspace --locked

# Build the tools in release mode.
build:
    cargo build --release --workspace

# Benchmarks (numbers go to BENCHMARKS.md; see there for the PyTorch side).
# Each example prints its usage; the PyTorch / surface-distance counterparts are in scripts/.
bench:
    cargo build --release -p clopa-nn -p clopa-metrics -p clopa-interact -p clopa-simulate --examples
    RAYON_NUM_THREADS=2 ./target/release/examples/bench_ops
    RAYON_NUM_THREADS=2 ./target/release/examples/bench_network
    RAYON_NUM_THREADS=2 ./target/release/examples/bench_prompts
    RAYON_NUM_THREADS=2 ./target/release/examples/bench_session tiny autozoom 5

# Generate the synthetic datasets of a profile under $CLOPA_DATA/synth/.
synth profile="quick":
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --release -p clopa-synth
    for kind in vessels organ small lesion; do
      ./target/release/clopa-synth --task "$kind" --cases 40 --seed 0 -o "$CLOPA_DATA/synth/$kind"
    done

# The whole protocol: synth -> split -> simulate (base) -> train episodes (in, cn) -> simulate -> eval -> rank.
# Not complete yet: simulation and training land with their issues (see README "Status").
reproduce profile="quick":
    #!/usr/bin/env bash
    set -euo pipefail
    out="runs/{{profile}}"
    mkdir -p "$out"
    cargo build --release --workspace
    just synth {{profile}}
    for m in data-manifests/synth-vessels.toml data-manifests/synth-organ.toml data-manifests/synth-small.toml data-manifests/synth-lesion.toml; do
      task=$(basename "$m" .toml)
      ./target/release/clopa-split "$m" --profile pipelines/{{profile}}.toml -o "$out/$task/split.parquet"
    done
    echo "reproduce: split done; simulation, training and ranking are not wired yet (issues 5, 6, 8)" >&2
    exit 1
