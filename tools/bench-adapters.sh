#!/usr/bin/env bash
# sinew vs PyTorch + AdapterHub, in one run, written to BENCHMARKS.md:
# - the work of benches/adapters.rs: PyTorch's twin (tools/reference/bench_adapters.py), then the
#   criterion bench on ndarray and flex, then PyTorch again (ratio = sinew time / PyTorch time:
#   below 1 is faster), then each side's peak memory per work in processes of its own;
# - each fused op: benches/kernels.rs (sinew's kernels and Burn's own ops) and
#   tools/reference/bench_ops.py (PyTorch's);
# - the GEMM crates with their AVX-512 kernels off and on (tools/bench-gemm.sh);
# - `sinew bench` on ndarray and flex: seconds and minor page faults per call.
# The measurements are kept in $CARGO_TARGET_DIR/benchmarks/ (criterion's estimates beside), so
# write_benchmarks.py can be re-run on them. Needs the reference venv (tools/reference/README.md).
# Takes ~45 minutes on 2 cores.
#   tools/bench-adapters.sh [PYTHON]      # PYTHON defaults to tools/reference/.venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-tools/reference/.venv/bin/python}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sinew-target}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
out="$CARGO_TARGET_DIR/benchmarks"
mkdir -p "$out"
cargo run --quiet --features wgpu -- fetch >/dev/null
# Compile everything first: nothing builds while anything is timed.
cargo bench --no-run --features flex,wgpu --bench adapters --bench kernels --bench peak_memory 2>/dev/null
cargo build --quiet --release --features flex,wgpu --bin sinew
"$python" tools/reference/bench_adapters.py 2>/dev/null > "$out/torch_before.json"
cargo bench --bench adapters --features flex,wgpu -- --noplot 'ndarray|flex' >&2
"$python" tools/reference/bench_adapters.py 2>/dev/null > "$out/torch_after.json"
# Peak memory: each side and work in its own process.
for work in train_step_seq_bn_32x128 inference_64x128; do
  "$python" tools/reference/bench_adapters.py --peak "$work" 2>/dev/null
  for backend in ndarray flex; do
    cargo bench --quiet --bench peak_memory --features flex,wgpu -- "$backend" "$work" 2>/dev/null
  done
done | paste -sd, - | sed 's/.*/[&]/' > "$out/memory.json"
cargo bench --bench kernels --features flex,wgpu -- --noplot >&2
"$python" tools/reference/bench_ops.py 2>/dev/null > "$out/torch_ops.json"
tools/bench-gemm.sh > "$out/gemm.json"
# `sinew bench` as users run it: time and minor page faults per call.
for work in train-step inference; do
  for backend in ndarray flex; do
    batch=32; [ "$work" = inference ] && batch=64
    "$CARGO_TARGET_DIR/release/sinew" bench --work "$work" --backend "$backend" --batch "$batch" --reps 5
  done
done > "$out/sinew_bench.jsonl"
"$python" tools/reference/write_benchmarks.py "$CARGO_TARGET_DIR" > BENCHMARKS.md
cat BENCHMARKS.md
