#!/usr/bin/env python3
"""Golden fixtures for AdapterFusion and composition, written with AdapterHub `adapters` on the real MiniLM.

Five bottleneck adapters with heads (three seq_bn, two double_seq_bn) get seeded random non-zero weights
and are saved with the library's own `save_adapter(..., use_safetensors=True)` into
tests/fixtures/fusion/adapters/<name>/. Each case activates one setup (Fuse with the dynamic and static
presets, Stack, BatchSplit, Parallel, Average); fusions get random weights and are
saved with `save_adapter_fusion(..., with_head=True, use_safetensors=True)` into
tests/fixtures/fusion/fusions/<case>/; seq_b's head alone goes to heads/seq_b/ (`save_head`). outputs.json records hidden states, logits per head, fusion
attentions and, for two fusions, the loss after `train_adapter_fusion`; grads.safetensors the whole
gradients of a few fusion tensors (`<case>/<key>`; the key's bias is left out: its gradient is zero
by construction, softmax being invariant to a shift shared by all adapters).

    tools/reference/.venv/bin/python tools/reference/make_fusion_fixtures.py [MODEL_DIR]
"""
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from adapters import AutoAdapterModel, DoubleSeqBnConfig, SeqBnConfig
from adapters.composition import Average, BatchSplit, Fuse, Parallel, Stack
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "fusion"
TEXTS = [
    "The service was slow but the food made up for it.",
    "Parameter-efficient fine-tuning trains a few weights.",
    "Worst purchase I have made this year!",
    "Ok.",
]
LABELS = [0, 2, 1, 2]
# A fusion layer is 2-3 matrices of 384x384 per adapter site, so the adapters sit in few layers
# (the first and last, or the last only) to keep the fixtures a few MB.
SEQ = SeqBnConfig(reduction_factor=32, leave_out=[1, 2, 3, 4])
DBL = DoubleSeqBnConfig(reduction_factor=32, leave_out=[0, 1, 2, 3, 4])
ADAPTERS = {"seq_a": SEQ, "seq_b": SEQ, "seq_c": SEQ, "dbl_a": DBL, "dbl_b": DBL}
# case -> (setup, fusion preset or None, setup expression in sinew's syntax)
CASES = {
    "fuse_dynamic": (Fuse("seq_a", "seq_b"), "dynamic", "Fuse(seq_a, seq_b)"),
    "fuse_static": (Fuse("dbl_a", "dbl_b"), "static", "Fuse(dbl_a, dbl_b)"),
    # Every switch away from the presets (temperature aside: AdapterHub anneals it on each call).
    "fuse_knobs": (Fuse("seq_b", "seq_c"), {
        "key": True, "query": True, "value": True, "query_before_ln": True, "regularization": False,
        "residual_before": True, "temperature": False, "value_before_softmax": False,
        "value_initialized": True, "dropout_prob": None,
    }, "Fuse(seq_b, seq_c)"),
    "stack": (Stack("seq_a", "dbl_b"), None, "Stack(seq_a, dbl_b)"),
    "batch_split": (BatchSplit("seq_a", "seq_b", batch_sizes=[1, 3]), None, "BatchSplit(seq_a, seq_b, batch_sizes=[1, 3])"),
    "parallel": (Parallel("seq_a", "seq_b"), None, "Parallel(seq_a, seq_b)"),
    "average": (Average("seq_a", "seq_b", weights=[0.3, 0.7]), None, "Average(seq_a, seq_b, weights=[0.3, 0.7])"),
}
GRADS = {
    "fuse_dynamic": [
        "bert.encoder.layer.0.output.adapter_fusion_layer.seq_a,seq_b.query.weight",
        "bert.encoder.layer.5.output.adapter_fusion_layer.seq_a,seq_b.value.weight",
        "bert.encoder.layer.5.output.adapter_fusion_layer.seq_a,seq_b.query.bias",
    ],
    "fuse_static": [
        "bert.encoder.layer.5.attention.output.adapter_fusion_layer.dbl_a,dbl_b.query.weight",
    ],
}


def rounded(values, digits=7):
    if isinstance(values, list):
        return [rounded(v, digits) for v in values]
    return round(values, digits)


def randomize(module, generator):
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator) * 0.1
            if name.endswith("weight") and p.dim() == 1:  # LayerNorm gamma
                p.copy_(1.0 + noise)
            elif name.endswith("value.weight"):  # near the identity, as trained fusions are
                p.copy_(torch.eye(p.shape[0]) + noise * 0.5)
            else:
                p.copy_(noise)


def drop_unused_fusion_layers(folder, leave_out):
    """AdapterHub builds a fusion layer in every layer, also where its adapters are left out and it
    is never used. Dropping those keeps the fixtures small; sinew reads folders with and without them
    (tests/fusion_parity.rs also checks a pristine folder it builds by putting such layers back)."""
    path = folder / "model_adapter_fusion.safetensors"
    tensors = load_file(path)
    kept = {k: v for k, v in tensors.items() if int(k.split(".")[3]) not in leave_out}
    save_file(kept, path, metadata={"format": "pt"})


def main():
    default = Path(os.environ.get("SINEW_HOME", Path.home() / ".cache" / "sinew")) / "models" / "all-MiniLM-L6-v2"
    model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = tok(TEXTS, padding="longest", return_tensors="pt")
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "adapters").mkdir(parents=True)
    (OUT / "fusions").mkdir(parents=True)
    model = AutoAdapterModel.from_pretrained(model_dir, attn_implementation="eager")
    generator = torch.Generator().manual_seed(2024)
    for name, config in ADAPTERS.items():
        model.add_adapter(name, config=config)
        model.add_classification_head(name, num_labels=3, layers=1)
        for layer in model.bert.encoder.layer:
            for site in (layer.attention.output, layer.output):
                if name in site.adapters:
                    randomize(site.adapters[name], generator)
        randomize(model.heads[name], generator)
        model.save_adapter(str(OUT / "adapters" / name), name, with_head=True, use_safetensors=True)
        if name == "seq_b":
            # A head saved alone (`save_head`, PyTorch's .bin as by default): `sinew encode --head`.
            (OUT / "heads" / name).mkdir(parents=True)
            model.save_head(str(OUT / "heads" / name), name)
    outputs = {"texts": TEXTS, "labels": LABELS, "cases": {}}
    grads = {}
    for case, (setup, preset, expression) in CASES.items():
        record = {"setup": expression}
        if preset is not None:
            model.add_adapter_fusion(setup, preset)
            fusion_name = setup.name
            model.add_classification_head(fusion_name, num_labels=3, layers=1)
            for layer in model.bert.encoder.layer:
                for site in (layer.attention.output, layer.output):
                    if fusion_name in site.adapter_fusion_layer:
                        randomize(site.adapter_fusion_layer[fusion_name], generator)
            randomize(model.heads[fusion_name], generator)
            model.save_adapter_fusion(str(OUT / "fusions" / case), setup, with_head=True, use_safetensors=True)
            drop_unused_fusion_layers(OUT / "fusions" / case, ADAPTERS[setup.first()].leave_out)
            record["fusion"] = fusion_name
        model.set_active_adapters(setup)
        if preset is not None:
            model.active_head = setup.name
        model.eval()
        with torch.no_grad():
            base = model.base_model(**enc)
            out = model(**enc, output_adapter_fusion_attentions=preset is not None)
        record["last_hidden_state"] = rounded(base.last_hidden_state.tolist())
        if hasattr(out, "head_outputs"):
            record["logits"] = [rounded(o.logits.tolist()) for o in out.head_outputs]
        else:
            record["logits"] = [rounded(out.logits.tolist())]
        record["heads"] = list(model.active_head) if isinstance(model.active_head, list) else [str(model.active_head)]
        if preset is not None:
            attentions = out.adapter_fusion_attentions[setup.name]
            record["fusion_attentions"] = {
                f"{layer}.{location}": rounded(value.tolist())
                for layer, sites in attentions.items()
                for location, value in sites.items()
            }
        if case in GRADS:
            model.train_adapter_fusion(setup)
            model.eval()  # train_adapter_fusion switches dropout on
            loss = model(**enc, labels=torch.tensor(LABELS)).loss
            loss.backward()
            params = dict(model.named_parameters())
            record["loss"] = loss.item()
            record["grads"] = {key: {"shape": list(params[key].grad.shape)} for key in GRADS[case]}
            for key in GRADS[case]:
                grads[f"{case}/{key}"] = params[key].grad.detach().clone().contiguous()
            model.zero_grad()
        outputs["cases"][case] = record
        print(case, record["heads"], sorted(record.get("fusion_attentions", {}))[:3])
    outputs["input_ids"] = enc["input_ids"].tolist()
    save_file(grads, str(OUT / "grads.safetensors"))
    (OUT / "outputs.json").write_text(json.dumps(outputs, separators=(",", ":")))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
