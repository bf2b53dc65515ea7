#!/usr/bin/env bash
# `sinew serve` under load, in one run: batching on, batching off, and the Python server users
# write today (FastAPI + transformers + AdapterHub), at 1, 8 and 64 clients, for 1 adapter and 16
# mixed; written into BENCHMARKS.md's serving section (tools/bench_serve.py). Needs the reference
# venv with fastapi and uvicorn (tools/reference/README.md). Takes ~15 minutes on 2 cores.
#   tools/bench-serve.sh [PYTHON]      # PYTHON defaults to tools/reference/.venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-tools/reference/.venv/bin/python}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sinew-target}"
cargo build --quiet --release --features flex --bin sinew
"$CARGO_TARGET_DIR/release/sinew" fetch >/dev/null
python3 tools/bench_serve.py --sinew "$CARGO_TARGET_DIR/release/sinew" --python "$python"
