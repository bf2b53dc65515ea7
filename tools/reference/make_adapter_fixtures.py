#!/usr/bin/env python3
"""Golden fixtures for the adapter parity tests, written with AdapterHub `adapters` on the real MiniLM.

For each case: add the adapter (and a classification head) with the library, overwrite every adapter
and head parameter with seeded random non-zero values (a zero-initialised up projection would make
the test trivial), save the folder with the library's own `save_adapter(..., use_safetensors=True)`
into tests/fixtures/adapters/<case>/, and record hidden states and logits of a small batch into
tests/fixtures/adapters/outputs.json. tests/adapter_parity.rs reads both.

    tools/reference/.venv/bin/python tools/reference/make_adapter_fixtures.py [MODEL_DIR]
"""
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from adapters import (
    AutoAdapterModel, BnConfig, DoubleSeqBnConfig, IA3Config, LoRAConfig, ParBnConfig, PrefixTuningConfig,
    PromptTuningConfig, SeqBnConfig,
)
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
LABELS = [0, 2, 1, 2]
# Gradients of cross-entropy on LABELS (AdapterHub's head loss, mean over the batch), after
# train_adapter, with dropout off: a few tensors per case, from the lowest layer (the gradient
# crosses the whole frozen backbone) to the head.
GRADS = {
    "seq_bn": [
        "bert.encoder.layer.0.output.adapters.seq_bn.adapter_down.0.weight",
        "bert.encoder.layer.5.output.adapters.seq_bn.adapter_up.bias",
        "heads.seq_bn.4.weight",
    ],
    "lora": [
        "bert.encoder.layer.0.attention.self.query.loras.lora.lora_A",
        "bert.encoder.layer.5.attention.self.value.loras.lora.lora_B",
    ],
    "ia3": ["bert.encoder.layer.0.intermediate.dense.loras.ia3.lora_B"],
    "prefix": [
        "bert.prefix_tuning.prefix_tunings.prefix.self_prefix.wte.weight",
        "bert.prefix_tuning.prefix_tunings.prefix.self_prefix.control_trans.2.bias",
    ],
    "prompt": ["bert.prompt_tuning.prompt_tunings.prompt.prompt_embedding.weight"],
}
OUT = ROOT / "tests" / "fixtures" / "adapters"

TEXTS = [
    "The service was slow but the food made up for it.",
    "Parameter-efficient fine-tuning trains a few weights.",
    "Worst purchase I have made this year!",
    "Ok.",
]

CASES = {
    "seq_bn": SeqBnConfig(),
    "double_seq_bn": DoubleSeqBnConfig(),
    # par_bn's default reduction 2 would make 3.5 MB of fixtures; 16 tests the same code.
    "par_bn": ParBnConfig(reduction_factor=16),
    "scaled_par_bn": ParBnConfig(scaling="learned", reduction_factor=16),
    # Most knobs away from their defaults at once. (ln_before cannot be saved as safetensors by
    # AdapterHub — its LayerNorm is registered twice — so it waits for .bin support.)
    "seq_knobs": BnConfig(
        mh_adapter=True, output_adapter=True, reduction_factor={"0": 8, "default": 16}, non_linearity="gelu",
        ln_after=True, use_gating=True, residual_before_ln="post_add",
        original_ln_before=True, scaling=0.5, leave_out=[5],
    ),
    "seq_knobs_b": BnConfig(
        mh_adapter=False, output_adapter=True, reduction_factor=12, non_linearity="tanh",
        original_ln_before=True, original_ln_after=False, residual_before_ln=False,
        adapter_residual_before_ln=True, ln_after=True, scaling="channel",
    ),
    "lora": LoRAConfig(r=8, alpha=16),
    # Every projection AdapterHub can reach, a gate instead of the fixed scaling, one layer left out.
    "lora_all": LoRAConfig(
        r=4, alpha=8, attn_matrices=["q", "k", "v"], intermediate_lora=True, output_lora=True,
        use_gating=True, leave_out=[2],
    ),
    "ia3": IA3Config(),
    # ln_before registers its LayerNorm twice, which safetensors refuses: AdapterHub's default
    # pytorch_adapter.bin is the only way it saves this (read through burn-store's PyTorch reader).
    "seq_ln_before_bin": BnConfig(
        mh_adapter=False, output_adapter=True, reduction_factor=16, non_linearity="relu",
        ln_before=True, original_ln_before=True,
    ),
    # Prefix tuning shares one prefix module across the layers, so AdapterHub saves it only as .bin.
    "prefix": PrefixTuningConfig(prefix_length=5, bottleneck_size=32),
    "prefix_flat_gated": PrefixTuningConfig(
        prefix_length=4, flat=True, use_gating=True, shared_gating=False, leave_out=[1],
    ),
    "prompt": PromptTuningConfig(prompt_length=4),
    "prompt_after_bos": PromptTuningConfig(prompt_length=3, combine="prefix_after_bos"),
    # The other head types, on adapters tested above.
    "multilabel_head": SeqBnConfig(reduction_factor=32),
    "tagging_head": LoRAConfig(r=2, alpha=4),
}
PYTORCH_BIN = {"seq_ln_before_bin", "prefix", "prefix_flat_gated"}
LABEL_NAMES = {0: "negative", 1: "neutral", 2: "positive"}
# Parameters that the per-site loop below does not reach: prefixes, their gates, prompts.
SHARED = ("prefix_tunings.{}.", "prefix_gates.{}.", "prompt_tunings.{}.")


def add_head(model, case):
    if case == "multilabel_head":
        model.add_classification_head(case, num_labels=3, layers=1, id2label=LABEL_NAMES, multilabel=True)
    elif case == "tagging_head":
        model.add_tagging_head(case, num_labels=3, layers=1, id2label=LABEL_NAMES)
    else:
        layers = 2 if case == "seq_bn" else 1  # one 2-layer head is enough; they are 0.6 MB each
        model.add_classification_head(case, num_labels=3, layers=layers, id2label=LABEL_NAMES)


def rounded(values, digits=7):
    if isinstance(values, list):
        return [rounded(v, digits) for v in values]
    return round(values, digits)


def randomize(module, generator, around_one=False):
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator) * 0.1
            if around_one or (name.endswith("weight") and p.dim() == 1):  # IA3 scales, LayerNorm gamma
                p.copy_(1.0 + noise)
            elif name.endswith("scaling"):
                p.copy_(1.0 + noise)
            else:
                p.copy_(noise)


def main():
    default = Path(os.environ.get("SINEW_HOME", Path.home() / ".cache" / "sinew")) / "models" / "all-MiniLM-L6-v2"
    model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = tok(TEXTS, padding="longest", return_tensors="pt")
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    outputs = {"texts": TEXTS, "cases": {}}
    for i, (case, config) in enumerate(CASES.items()):
        model = AutoAdapterModel.from_pretrained(model_dir, attn_implementation="eager")
        model.add_adapter(case, config=config)
        add_head(model, case)
        generator = torch.Generator().manual_seed(1000 + i)
        for layer in model.bert.encoder.layer:
            for site in (layer.attention.output, layer.output):
                if case in site.adapters:
                    randomize(site.adapters[case], generator)
            attn = layer.attention.self
            for proj in (attn.query, attn.key, attn.value, layer.intermediate.dense, layer.output.dense):
                if hasattr(proj, "loras") and case in proj.loras:
                    randomize(proj.loras[case], generator, around_one=case.startswith("ia3"))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if any(key.format(case) in name for key in SHARED):
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
        randomize(model.heads[case], generator)
        model.set_active_adapters(case)
        model.eval()
        with torch.no_grad():
            out = model(**enc, output_hidden_states=True)
        model.save_adapter(str(OUT / case), case, with_head=True, use_safetensors=case not in PYTORCH_BIN)
        outputs["cases"][case] = {
            "last_hidden_state": rounded(out.hidden_states[-1].tolist()),
            "logits": rounded(out.logits.tolist()),
        }
        if case in GRADS:
            model.train_adapter(case)
            model.eval()  # train_adapter switches dropout on
            loss = model(**enc, labels=torch.tensor(LABELS)).loss
            loss.backward()
            params = dict(model.named_parameters(remove_duplicate=False))
            outputs["cases"][case]["loss"] = loss.item()
            outputs["cases"][case]["grads"] = {
                key: {"shape": list(params[key].grad.shape), "values": [round(v, 9) for v in params[key].grad.flatten().tolist()]}
                for key in GRADS[case]
            }
        print(case, sorted(p.name for p in (OUT / case).iterdir()))
    outputs["input_ids"] = enc["input_ids"].tolist()
    outputs["labels"] = LABELS
    (OUT / "outputs.json").write_text(json.dumps(outputs, separators=(",", ":")))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
