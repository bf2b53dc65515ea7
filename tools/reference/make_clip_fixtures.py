#!/usr/bin/env python3
"""Golden fixture for global-norm gradient clipping, written with `torch.nn.utils.clip_grad_norm_`.

Four parameters shaped like two Linear layers (3→2, 2→1: weights and biases) get seeded random
gradients; tests/fixtures/clip.json holds them, the total norm PyTorch reports and the clipped
gradients, for a limit that clips and one that does not.

    tools/reference/.venv/bin/python tools/reference/make_clip_fixtures.py
"""
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
SHAPES = [(3, 2), (2,), (2, 1), (1,)]


def main():
    torch.manual_seed(0)
    grads = [torch.randn(s) * 3.0 for s in SHAPES]
    cases = []
    for max_norm in [1.0, 100.0]:
        params = [torch.nn.Parameter(torch.zeros(s)) for s in SHAPES]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        total = torch.nn.utils.clip_grad_norm_(params, max_norm)
        cases.append({
            "max_norm": max_norm,
            "total_norm": float(total),
            "clipped": [p.grad.flatten().tolist() for p in params],
        })
    out = {
        "torch": torch.__version__,
        "shapes": [list(s) for s in SHAPES],
        "grads": [g.flatten().tolist() for g in grads],
        "cases": cases,
    }
    (ROOT / "tests" / "fixtures" / "clip.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
