#!/usr/bin/env python3
"""Golden fixtures for PEFT LoRA folders, written with HuggingFace `peft` on the real MiniLM.

A LoRA on query/key/value/intermediate.dense with seeded random non-zero weights (PEFT starts B at
zero, which would make the test trivial), saved with PEFT's own `save_pretrained` into
tests/fixtures/peft/lora/, and the hidden states of a small batch in tests/fixtures/peft/outputs.json.

Then one folder per form of PEFT's target rules under tests/fixtures/peft/forms/<form>/ (r 2-4), each
with its hidden states in tests/fixtures/peft/forms/<form>.json: a target list matched by suffix
("dense" = attention output, intermediate and output), a regex, "all-linear" with a regex
exclude_modules, layers_to_transform with layers_pattern, rank_pattern/alpha_pattern, use_rslora,
bias "lora_only" (the adapted projections' biases trained and saved); a sequence-classification
folder (task_type SEQ_CLS: the LoRA under `bert.`, the classifier in modules_to_save, its logits in
seq_cls.json); and a DoRA folder that sinew must refuse.

    tools/reference/.venv/bin/python tools/reference/make_peft_fixtures.py [MODEL_DIR]
"""
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "peft"
TEXTS = ["LoRA adds a low-rank update to frozen weights.", "Short one.", "PEFT saves only what was trained."]


FORMS = {
    "suffix_list": dict(r=2, lora_alpha=4, target_modules=["query", "dense", "value"], exclude_modules=["pooler.dense"]),
    "regex": dict(r=2, lora_alpha=6, target_modules=r"encoder\.layer\.[0-2]\.attention\.self\.(query|key)"),
    "all_linear": dict(r=2, lora_alpha=2, target_modules="all-linear", exclude_modules=r".*pooler.*"),
    "layers": dict(r=2, lora_alpha=4, target_modules=["query", "value", "output.dense"], layers_to_transform=[1, 4],
                   layers_pattern="layer"),
    "patterns": dict(r=2, lora_alpha=4, target_modules=["query", "value", "intermediate.dense"],
                     rank_pattern={"value": 4, "layer.2.attention.self.query": 3}, alpha_pattern={"intermediate.dense": 8}),
    "rslora": dict(r=4, lora_alpha=8, target_modules=["key", "output.dense"], use_rslora=True),
    "bias_lora_only": dict(r=2, lora_alpha=4, target_modules=["query", "value", "intermediate.dense"], bias="lora_only"),
    "dora": dict(r=2, lora_alpha=4, target_modules=["query"], use_dora=True),
}


def randomize(model, seed):
    """Random non-zero LoRA weights, and new values for every other parameter PEFT trains (the
    biases of `bias="lora_only"`, the classifier of `modules_to_save`)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)


def hidden_json(tok, model):
    model.eval()
    enc = tok(TEXTS, padding="longest", return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    return {"texts": TEXTS, "input_ids": enc["input_ids"].tolist(),
            "last_hidden_state": [[[round(v, 7) for v in row] for row in seq] for seq in hidden.tolist()]}


def forms(model_dir, tok):
    out = OUT / "forms"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for seed, (form, kwargs) in enumerate(FORMS.items()):
        model = AutoModel.from_pretrained(model_dir, attn_implementation="eager")
        model = get_peft_model(model, LoraConfig(lora_dropout=0.0, **kwargs))
        print(form, len(model.targeted_module_names), "modules")
        randomize(model, 100 + seed)
        (out / f"{form}.json").write_text(json.dumps(hidden_json(tok, model), separators=(",", ":")))
        model.save_pretrained(out / form)
        (out / form / "README.md").unlink(missing_ok=True)
    seq_cls(model_dir, tok, out, seed=200)


def seq_cls(model_dir, tok, out, seed):
    """A LoRA for sequence classification: PEFT wraps BertForSequenceClassification, so the LoRA
    keys carry `bert.` and the classifier (on the pooler output) is saved as a module to save."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3, attn_implementation="eager")
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, lora_dropout=0.0,
                                             target_modules=["query", "value"]))
    randomize(model, seed)
    model.eval()
    enc = tok(TEXTS, padding="longest", return_tensors="pt")
    with torch.no_grad():
        result = model(**enc, output_hidden_states=True)
    data = {"texts": TEXTS, "input_ids": enc["input_ids"].tolist(),
            "last_hidden_state": [[[round(v, 7) for v in row] for row in seq] for seq in result.hidden_states[-1].tolist()],
            "logits": [[round(v, 7) for v in row] for row in result.logits.tolist()]}
    (out / "seq_cls.json").write_text(json.dumps(data, separators=(",", ":")))
    model.save_pretrained(out / "seq_cls")
    (out / "seq_cls" / "README.md").unlink(missing_ok=True)


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
    for stale in (OUT / "lora", OUT / "outputs.json"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
    model.save_pretrained(OUT / "lora")
    (OUT / "lora" / "README.md").unlink(missing_ok=True)
    out = {"texts": TEXTS, "input_ids": enc["input_ids"].tolist(),
           "last_hidden_state": [[[round(v, 7) for v in row] for row in seq] for seq in hidden.tolist()]}
    (OUT / "outputs.json").write_text(json.dumps(out, separators=(",", ":")))
    print("wrote", OUT, sorted(p.name for p in (OUT / "lora").iterdir()))
    forms(model_dir, tok)


if __name__ == "__main__":
    main()
