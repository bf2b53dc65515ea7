#!/usr/bin/env python3
"""Golden fixture for half-precision checkpoints: all-MiniLM-L6-v2 with its weights rounded to
f16 and to bf16 (`model.half()` / `model.bfloat16()`, round to nearest even), run in f32 by
transformers. A checkpoint stored in that dtype, loaded by sinew (cast to f32, which is exact),
must give these hidden states.

tests/fixtures/half.json: the texts, their token ids, and per dtype the last_hidden_state.

    tools/reference/.venv/bin/python tools/reference/make_half_fixtures.py [MODEL_DIR]
"""
import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["Half precision weights load as f32.", "bf16 keeps the range, f16 the digits."]


def main():
    default = Path(os.environ.get("SINEW_HOME", Path.home() / ".cache" / "sinew")) / "models" / "all-MiniLM-L6-v2"
    model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    tok = AutoTokenizer.from_pretrained(model_dir)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    out = {"texts": TEXTS, "input_ids": batch["input_ids"].tolist(), "cases": {}}
    for name, dtype in [("f16", torch.float16), ("bf16", torch.bfloat16)]:
        model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
        model = model.to(dtype).float()
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        out["cases"][name] = [[[round(v, 6) for v in row] for row in seq] for seq in hidden.tolist()]
    (ROOT / "tests" / "fixtures" / "half.json").write_text(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
