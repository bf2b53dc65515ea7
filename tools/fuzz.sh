#!/usr/bin/env bash
# A longer fuzzing campaign than CI's: tests/fuzz.rs with more cases per reader and a new seed
# per round. CI runs the same properties with 10,000 cases and seed 0.
#
#   tools/fuzz.sh [ROUNDS] [CASES]      # default: 10 rounds of 100,000 cases per reader
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-10}
cases=${2:-100000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sinew-target}
cargo test --release --test fuzz --no-run
for ((round = 1; round <= rounds; round++)); do
    seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
    echo "round $round/$rounds: seed $seed, $cases cases per reader"
    SINEW_FUZZ_SEED=$seed SINEW_FUZZ_CASES=$cases cargo test --release --test fuzz -- --test-threads 2 \
        || { echo "failed with SINEW_FUZZ_SEED=$seed SINEW_FUZZ_CASES=$cases (rerun that to reproduce)"; exit 1; }
done
