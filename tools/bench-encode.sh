#!/usr/bin/env bash
# Runs the criterion `encode` bench (ndarray, flex) and its PyTorch twin in one go, then prints
# sentences/s for each and the ratio sinew / PyTorch. Needs the reference venv (tools/reference/README.md).
#   tools/bench-encode.sh [PYTHON]     # PYTHON defaults to tools/reference/.venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-tools/reference/.venv/bin/python}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sinew-target}"
cargo run --release --quiet -- fetch >/dev/null
torch_before=$("$python" tools/reference/bench_encode.py)
cargo bench --bench encode --features flex -- --noplot >/dev/null
torch_after=$("$python" tools/reference/bench_encode.py)
"$python" - "$CARGO_TARGET_DIR" "$torch_before" "$torch_after" <<'PY'
import json, sys, pathlib
target, before, after = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
torch_sps = (before["sentences_per_s"] + after["sentences_per_s"]) / 2
print(f"pytorch   {torch_sps:8.1f} sentences/s (threads={before['torch_threads']}; before {before['sentences_per_s']:.1f}, after {after['sentences_per_s']:.1f})")
for backend in ["ndarray", "flex"]:
    est = pathlib.Path(target) / "criterion" / "encode_32x128" / backend / "new" / "estimates.json"
    ns = json.loads(est.read_text())["median"]["point_estimate"]
    sps = 32 / (ns / 1e9)
    print(f"{backend:9} {sps:8.1f} sentences/s   sinew/pytorch = {sps / torch_sps:.2f}")
PY
