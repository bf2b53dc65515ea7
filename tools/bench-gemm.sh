#!/usr/bin/env bash
# benches/gemm.rs with each GEMM crate's AVX-512 kernels compiled out and in (`gemm/x86-v4`,
# `matrixmultiply/avx512`). Inside the workspace cargo unifies features, so the bench runs here
# as a project of its own, once per setting. Prints one JSON object: GFLOP/s per
# "<group>/<crate>[+feature]". Takes ~10 minutes on 2 cores.
#   tools/bench-gemm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$HOME/.cache/sinew-target}/gemm-features"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/benches"
cp benches/gemm.rs "$work/benches/gemm.rs"
: > "$work/src/lib.rs"
# The versions the workspace locks.
version() { awk -v n="$1" '$0 == "name = \"" n "\"" { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock; }
cat > "$work/Cargo.toml" <<TOML
[package]
name = "gemm-features"
version = "0.0.0"
edition = "2021"
publish = false

[features]
avx512 = ["gemm/x86-v4", "matrixmultiply/avx512"]

[dependencies]
gemm = { version = "=$(version gemm)", default-features = false, features = ["std", "rayon"] }
matrixmultiply = { version = "=$(version matrixmultiply)", default-features = false, features = ["std", "threading"] }

[dev-dependencies]
criterion = { version = "0.8", default-features = false, features = ["cargo_bench_support"] }

[[bench]]
name = "gemm"
harness = false

[workspace]
TOML
for setting in off on; do
  features=()
  [ "$setting" = on ] && features=(--features avx512)
  CARGO_TARGET_DIR="$target/$setting" cargo bench --quiet --manifest-path "$work/Cargo.toml" \
    "${features[@]}" --bench gemm -- --noplot >&2
done
python3 - "$target" <<'PY'
import json, sys
from pathlib import Path
out = {}
for setting, suffix in (("off", ""), ("on", "+avx512")):
    for est in sorted(Path(sys.argv[1], setting, "criterion").glob("gemm_*/*/new/estimates.json")):
        group, crate = est.parts[-4], est.parts[-3]
        bench = json.loads((est.parent / "benchmark.json").read_text())
        flops = bench["throughput"]["Elements"]
        seconds = json.loads(est.read_text())["median"]["point_estimate"] / 1e9
        out[f"{group}/{crate}{suffix}"] = flops / seconds / 1e9
print(json.dumps(out))
PY
