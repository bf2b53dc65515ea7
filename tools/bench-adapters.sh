#!/usr/bin/env bash
# sinew vs PyTorch + AdapterHub on the work of benches/adapters.rs, in one run: PyTorch's twin
# (tools/reference/bench_adapters.py), then the criterion bench on ndarray and flex, then PyTorch
# again, then each side's peak memory per work in processes of its own; writes BENCHMARKS.md
# with the ratios (sinew time / PyTorch time: below 1 is faster).
# Needs the reference venv (tools/reference/README.md). Takes ~25 minutes on 2 cores.
#   tools/bench-adapters.sh [PYTHON]      # PYTHON defaults to tools/reference/.venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-tools/reference/.venv/bin/python}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sinew-target}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cargo run --quiet --features wgpu -- fetch >/dev/null
torch_before=$("$python" tools/reference/bench_adapters.py 2>/dev/null)
cargo bench --bench adapters --features flex,wgpu -- --noplot 'ndarray|flex' >&2
torch_after=$("$python" tools/reference/bench_adapters.py 2>/dev/null)
# Peak memory: each side and work in its own process.
memory=$(for work in train_step_seq_bn_32x128 inference_64x128; do
  "$python" tools/reference/bench_adapters.py --peak "$work" 2>/dev/null
  for backend in ndarray flex; do
    cargo bench --quiet --bench peak_memory --features flex,wgpu -- "$backend" "$work" 2>/dev/null
  done
done | paste -sd, -)
"$python" tools/reference/write_benchmarks.py "$CARGO_TARGET_DIR" "$torch_before" "$torch_after" "[$memory]" > BENCHMARKS.md
cat BENCHMARKS.md
