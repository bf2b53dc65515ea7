#!/usr/bin/env python3
"""Golden fixtures for PEFT LoRA folders, written with HuggingFace `peft` on the real MiniLM.

A LoRA on query/key/value/intermediate.dense with seeded random non-zero weights (PEFT starts B at
zero, which would make the test trivial), saved with PEFT's own `save_pretrained` into
tests/fixtures/peft/lora/, and the hidden states of a small batch in tests/fixtures/peft/outputs.json.

    tools/reference/.venv/bin/python tools/reference/make_peft_fixtures.py [MODEL_DIR]
"""
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModel, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "peft"
TEXTS = ["LoRA adds a low-rank update to frozen weights.", "Short one.", "PEFT saves only what was trained."]


def main():
    default = Path(os.environ.get("SINEW_HOME", Path.home() / ".cache" / "sinew")) / "models" / "all-MiniLM-L6-v2"
    model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager")
    config = LoraConfig(r=4, lora_alpha=12, target_modules=["query", "key", "value", "intermediate.dense"],
                        lora_dropout=0.0, layers_to_transform=[0, 1, 3, 4, 5])
    model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    model.eval()
    enc = tok(TEXTS, padding="longest", return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    if OUT.exists():
        shutil.rmtree(OUT)
    model.save_pretrained(OUT / "lora")
    (OUT / "lora" / "README.md").unlink(missing_ok=True)
    out = {"texts": TEXTS, "input_ids": enc["input_ids"].tolist(),
           "last_hidden_state": [[[round(v, 7) for v in row] for row in seq] for seq in hidden.tolist()]}
    (OUT / "outputs.json").write_text(json.dumps(out, separators=(",", ":")))
    print("wrote", OUT, sorted(p.name for p in (OUT / "lora").iterdir()))


if __name__ == "__main__":
    main()
