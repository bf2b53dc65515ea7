#!/usr/bin/env python3
"""Golden fixture for sentence pairs: HF `tokenizers`' encodings of a batch where some examples
have a second text and some do not, and `transformers`' hidden states for that batch padded.

tests/fixtures/pairs.json: the examples (`pair` null where there is none), each one's token ids
and segment ids from the model's own tokenizer.json (`[CLS] a [SEP] b [SEP]`, segments 0 then 1),
and all-MiniLM-L6-v2's last_hidden_state for the padded batch.

    tools/reference/.venv/bin/python tools/reference/make_pair_fixtures.py [MODEL_DIR]
"""
import json
import os
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import AutoModel

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [
    ("A man is playing a guitar.", "Someone plays an instrument.", "entailment"),
    ("The cat sleeps on the mat.", None, "neutral"),
    ("Two dogs run in the park.", "No animals are outside.", "contradiction"),
    ("It rained all day, so the match was cancelled.", "The weather stopped the game.", "entailment"),
    ("Short.", None, "neutral"),
]


def main():
    default = Path(os.environ.get("SINEW_HOME", Path.home() / ".cache" / "sinew")) / "models" / "all-MiniLM-L6-v2"
    model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    encodings = [tokenizer.encode(a, b) if b is not None else tokenizer.encode(a) for a, b, _ in EXAMPLES]
    width = max(len(e.ids) for e in encodings)
    pad = lambda xs: xs + [0] * (width - len(xs))
    ids = torch.tensor([pad(e.ids) for e in encodings])
    types = torch.tensor([pad(e.type_ids) for e in encodings])
    mask = torch.tensor([pad([1] * len(e.ids)) for e in encodings])
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        hidden = model(input_ids=ids, token_type_ids=types, attention_mask=mask).last_hidden_state
    out = {
        "examples": [{"text": a, "pair": b, "label": l} for a, b, l in EXAMPLES],
        "input_ids": [e.ids for e in encodings],
        "token_type_ids": [e.type_ids for e in encodings],
        "last_hidden_state": [[[round(v, 6) for v in row] for row in seq] for seq in hidden.tolist()],
    }
    (ROOT / "tests" / "fixtures" / "pairs.json").write_text(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
