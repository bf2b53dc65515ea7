#!/usr/bin/env python3
"""Golden fixtures for the config-union parity tests (AdapterHub's `MAMConfig` and `UniPELTConfig`),
written with AdapterHub `adapters` on the real MiniLM.

A union is one adapter name whose parts (prefix tuning, a bottleneck, LoRA) each sit where they would
alone; `adapter_config.json` holds `{"architecture": "union", "configs": [<each part's full dict>]}`.
For each case: add the union (and a classification head) with the library, overwrite every adapter
and head parameter with seeded random non-zero values (the prefix MLP, the bottleneck, the LoRA
matrices and all gates), save the folder with the library's own `save_adapter(..., with_head=True)`
into tests/fixtures/union/<case>/ — as `pytorch_adapter.bin`: the prefix part is one module shared
across the layers, which safetensors refuses, so AdapterHub saves a union with a prefix only as .bin —
check that the folder as `load_adapter` reads it back gives the same outputs, and record hidden
states, logits, the loss and a few gradients into tests/fixtures/union/outputs.json, with the presets
`MAMConfig()` and `UniPELTConfig()` as AdapterHub writes them (`presets`).

The presets' own sizes (prefix MLP 800 wide, reduction factor 2) would make 20 MB folders; the cases
keep their structure at small sizes. UniPELT's LoRA has r=4, alpha=8: gated LoRA drops alpha / r, and
2 (not 1) catches a port that keeps it.

    tools/reference/.venv/bin/python tools/reference/make_union_fixtures.py [MODEL_DIR]
"""
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from adapters import (
    AutoAdapterModel, LoRAConfig, MAMConfig, ParBnConfig, PrefixTuningConfig, SeqBnConfig, UniPELTConfig,
)
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
LABELS = [0, 2, 1, 2]
OUT = ROOT / "tests" / "fixtures" / "union"

TEXTS = [
    "The service was slow but the food made up for it.",
    "Parameter-efficient fine-tuning trains a few weights.",
    "Worst purchase I have made this year!",
    "Ok.",
]

# MAMConfig(prefix_tuning, adapter); UniPELTConfig(prefix_tuning, adapter, lora) sets use_gating=True
# on all three parts. `configs` keeps this order.
CASES = {
    "mam": MAMConfig(PrefixTuningConfig(bottleneck_size=8), ParBnConfig(reduction_factor=32)),
    "unipelt": UniPELTConfig(
        PrefixTuningConfig(prefix_length=10, bottleneck_size=8), SeqBnConfig(reduction_factor=32), LoRAConfig(r=4),
    ),
}
PRESETS = {"mam": MAMConfig(), "unipelt": UniPELTConfig()}
PREFIX = "bert.prefix_tuning.prefix_tunings.{}.self_prefix."
LAYER = "bert.encoder.layer.{}."
# Gradients of cross-entropy on LABELS (AdapterHub's head loss, mean over the batch), after
# train_adapter, with dropout off: the prefix MLP (shared by all layers), each part's tensors in the
# lowest and the highest layer, the gates, the head.
GRADS = {
    "mam": [
        PREFIX + "control_trans.0.weight",
        PREFIX + "control_trans.2.bias",
        LAYER.format(0) + "output.adapters.{}.adapter_down.0.weight",
        LAYER.format(5) + "output.adapters.{}.adapter_up.bias",
        "heads.{}.1.weight",
    ],
    "unipelt": [
        PREFIX + "wte.weight",
        PREFIX + "control_trans.2.bias",
        LAYER.format(0) + "attention.self.prefix_tuning.prefix_gates.{}.weight",
        LAYER.format(5) + "attention.self.prefix_tuning.prefix_gates.{}.bias",
        LAYER.format(0) + "output.adapters.{}.adapter_down.0.weight",
        LAYER.format(0) + "output.adapters.{}.gate.weight",
        LAYER.format(5) + "output.adapters.{}.gate.bias",
        LAYER.format(0) + "attention.self.query.loras.{}.lora_A",
        LAYER.format(0) + "attention.self.query.loras.{}.gate.weight",
        LAYER.format(5) + "attention.self.value.loras.{}.lora_B",
        LAYER.format(5) + "attention.self.value.loras.{}.gate.bias",
        "heads.{}.1.weight",
    ],
}
LABEL_NAMES = {0: "negative", 1: "neutral", 2: "positive"}


def rounded(values, digits=7):
    if isinstance(values, list):
        return [rounded(v, digits) for v in values]
    return round(values, digits)


def randomize(model, case, generator):
    """Every parameter of the adapter and its head: the union's parts all carry the one name."""
    with torch.no_grad():
        for name, p in model.named_parameters():  # each shared prefix parameter once
            if f".{case}." in name or name.startswith(f"heads.{case}."):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)


def saved_config(model_dir, name, config):
    """The `config` object AdapterHub's save_adapter writes for `config`."""
    model = AutoAdapterModel.from_pretrained(model_dir)
    model.add_adapter(name, config=config)
    with tempfile.TemporaryDirectory() as folder:
        model.save_adapter(folder, name)
        return json.loads((Path(folder) / "adapter_config.json").read_text())["config"]


def run(model, enc):
    model.eval()
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    return out.hidden_states[-1], out.logits


def main():
    default = Path(os.environ.get("SINEW_HOME", Path.home() / ".cache" / "sinew")) / "models" / "all-MiniLM-L6-v2"
    model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = tok(TEXTS, padding="longest", return_tensors="pt")
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    outputs = {"texts": TEXTS, "presets": {name: saved_config(model_dir, name, c) for name, c in PRESETS.items()}}
    outputs["cases"] = {}
    for i, (case, config) in enumerate(CASES.items()):
        torch.manual_seed(2000 + i)  # the library's own init (overwritten below)
        model = AutoAdapterModel.from_pretrained(model_dir, attn_implementation="eager")
        model.add_adapter(case, config=config)
        model.add_classification_head(case, num_labels=3, layers=1, id2label=LABEL_NAMES)
        randomize(model, case, torch.Generator().manual_seed(1000 + i))
        model.set_active_adapters(case)
        hidden, logits = run(model, enc)
        model.save_adapter(str(OUT / case), case, with_head=True)  # .bin: safetensors refuses the shared prefix
        result = {"last_hidden_state": rounded(hidden.tolist()), "logits": rounded(logits.tolist())}

        reloaded = AutoAdapterModel.from_pretrained(model_dir, attn_implementation="eager")
        name = reloaded.load_adapter(str(OUT / case), load_as=case, set_active=True)
        re_hidden, re_logits = run(reloaded, enc)
        assert torch.equal(re_hidden, hidden) and torch.equal(re_logits, logits), f"{case}: the saved folder differs"

        model.train_adapter(case)
        model.eval()  # train_adapter switches dropout on
        loss = model(**enc, labels=torch.tensor(LABELS)).loss
        loss.backward()
        params = dict(model.named_parameters(remove_duplicate=False))
        result["loss"] = loss.item()
        result["grads"] = {}
        for key in (k.format(case) for k in GRADS[case]):
            grad = params[key].grad
            result["grads"][key] = {"shape": list(grad.shape), "values": [round(v, 9) for v in grad.flatten().tolist()]}
        outputs["cases"][case] = result
        print(case, name, {p.name: p.stat().st_size for p in sorted((OUT / case).iterdir())})
    outputs["input_ids"] = enc["input_ids"].tolist()
    outputs["attention_mask"] = enc["attention_mask"].tolist()
    outputs["labels"] = LABELS
    (OUT / "outputs.json").write_text(json.dumps(outputs, separators=(",", ":")))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
