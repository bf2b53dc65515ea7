#!/usr/bin/env python3
"""Golden fixtures for the ReFT parity tests, written with AdapterHub `adapters` on the real MiniLM.

For each case: add the ReFT adapter (LoReft, NoReft, DiReft) and a classification head with the
library, overwrite every adapter and head parameter with seeded random non-zero values (the
orthogonal projections' `original` too, and their `base` buffer with a seeded orthogonal matrix),
save the folder with the library's own `save_adapter(..., use_safetensors=True)` into
tests/fixtures/reft/<case>/, and record hidden states, logits, the loss and a few gradients of the
right-padded batch into tests/fixtures/reft/outputs.json. `crates/sinew-adapter/src/reft.rs` says
what the library computes (positions under padding, the Householder rebuild of the projection).

The orthogonal projection's `base` buffer is a 384 x 384 matrix per unit, so each orthogonal unit
costs 0.6 MB on disk: the orthogonal cases keep to two layers (AdapterHub's `LoReftConfig()` as is
would be 7 MB: all six layers, two units each — the suffix unit is saved although
suffix_positions is 0); `noreft` covers `layers: "all"`.

DiReft's `subtract_projection=False` is a class attribute, not a dataclass field: it is not written
to adapter_config.json, and `load_adapter` of the folder gives a ReftConfig that subtracts. The
`direft` case therefore records both: the outputs of the model that saved the folder, and
`reloaded` ones, those of the folder as AdapterHub loads it. For the other cases the script checks
that the reloaded folder gives the same outputs.

    tools/reference/.venv/bin/python tools/reference/make_reft_fixtures.py [MODEL_DIR]
"""
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from adapters import AutoAdapterModel, DiReftConfig, LoReftConfig, NoReftConfig
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
LABELS = [0, 2, 1, 2]
OUT = ROOT / "tests" / "fixtures" / "reft"

TEXTS = [
    "The service was slow but the food made up for it.",
    "Parameter-efficient fine-tuning trains a few weights.",
    "Worst purchase I have made this year!",
    "Ok.",
]

CASES = {
    # Positions from both ends (the 4-token "Ok." is exactly prefix + suffix long).
    "loreft": LoReftConfig(r=4, prefix_positions=2, suffix_positions=2, layers=[0, 5]),
    "noreft": NoReftConfig(r=2, prefix_positions=3),
    # Prefix 3 (the default) + suffix 3: on "Ok." positions 1 and 2 are in both; the suffix unit wins.
    "direft": DiReftConfig(r=2, suffix_positions=3),
    # One unit for prefix and suffix, two layers, an activation on the source, and projection
    # diagonals away from -1 (the library truncates them to integers: 0.7 -> 0 drops a row, 2.5 -> 2).
    "loreft_tied": LoReftConfig(
        r=2, layers=[0, 3], prefix_positions=2, suffix_positions=3, tied_weights=True, non_linearity="gelu",
    ),
}
# Diagonal of each orthogonal unit's `original` (r values), per case; elsewhere +-1 with noise on top.
DIAGONALS = {"loreft_tied": {0: [-1.3, 0.7], 3: [2.5, 1.1]}}

UNIT = "bert.encoder.layer.{}.reft_layer.refts.{}.units.{}."
ORIGINAL = "projection.parametrizations.weight.original"
# Gradients of cross-entropy on LABELS (AdapterHub's head loss, mean over the batch), after
# train_adapter, with dropout off: the lowest and the highest intervened layer. The head reads
# position 0 of the last layer only, so a suffix unit of the last layer gets no gradient: suffix
# units are taken from lower layers.
GRADS = {
    "loreft": [(0, 0, "learned_source.weight"), (0, 1, ORIGINAL), (5, 0, ORIGINAL), (5, 0, "learned_source.bias")],
    "noreft": [(0, 0, "projection.weight"), (5, 0, "learned_source.weight")],
    "direft": [(0, 1, "projection.weight"), (4, 1, "learned_source.weight"), (5, 0, "learned_source.bias")],
    "loreft_tied": [(0, 0, ORIGINAL), (3, 0, "learned_source.weight")],
}
LABEL_NAMES = {0: "negative", 1: "neutral", 2: "positive"}


def rounded(values, digits=7):
    if isinstance(values, list):
        return [rounded(v, digits) for v in values]
    return round(values, digits)


def orthogonal_matrix(n, generator):
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return (q * r.diagonal().sign()).float()


def randomize_units(model, case, generator):
    with torch.no_grad():
        for index, layer in enumerate(model.bert.encoder.layer):
            if case not in layer.reft_layer.refts:
                continue
            for unit in layer.reft_layer.refts[case].units:
                unit.learned_source.weight.copy_(torch.randn(unit.learned_source.weight.shape, generator=generator) * 0.1)
                unit.learned_source.bias.copy_(torch.randn(unit.learned_source.bias.shape, generator=generator) * 0.1)
                if not unit.orthogonal:
                    unit.projection.weight.copy_(torch.randn(unit.projection.weight.shape, generator=generator) * 0.1)
                    continue
                weight = unit.projection.parametrizations.weight
                original = weight.original
                original.copy_(torch.randn(original.shape, generator=generator) * 0.1)
                r = original.shape[0]
                if index in DIAGONALS.get(case, {}):
                    diagonal = torch.tensor(DIAGONALS[case][index])
                else:  # sign * (1 + [0, 0.5)): truncates to -1 or 1
                    sign = torch.randint(0, 2, (r,), generator=generator) * 2 - 1
                    diagonal = sign * (1.0 + 0.5 * torch.rand(r, generator=generator))
                original.diagonal().copy_(diagonal)
                weight[0].base = orthogonal_matrix(weight[0].base.shape[0], generator)


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
    outputs = {"texts": TEXTS, "cases": {}}
    for i, (case, config) in enumerate(CASES.items()):
        torch.manual_seed(2000 + i)  # the library's own init (overwritten below)
        model = AutoAdapterModel.from_pretrained(model_dir, attn_implementation="eager")
        model.add_adapter(case, config=config)
        model.add_classification_head(case, num_labels=3, layers=1, id2label=LABEL_NAMES)
        generator = torch.Generator().manual_seed(1000 + i)
        randomize_units(model, case, generator)
        with torch.no_grad():
            for p in model.heads[case].parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
        model.set_active_adapters(case)
        hidden, logits = run(model, enc)
        model.save_adapter(str(OUT / case), case, with_head=True, use_safetensors=True)
        result = {"last_hidden_state": rounded(hidden.tolist()), "logits": rounded(logits.tolist())}

        reloaded = AutoAdapterModel.from_pretrained(model_dir, attn_implementation="eager")
        name = reloaded.load_adapter(str(OUT / case), load_as=case, set_active=True, use_safetensors=True)
        re_hidden, re_logits = run(reloaded, enc)
        same = torch.allclose(re_hidden, hidden, atol=1e-6) and torch.allclose(re_logits, logits, atol=1e-6)
        if case == "direft":
            assert not same, "DiReft reloaded as saved: AdapterHub now keeps subtract_projection"
            result["reloaded"] = {"last_hidden_state": rounded(re_hidden.tolist()), "logits": rounded(re_logits.tolist())}
        else:
            assert same, f"{case}: the saved folder does not reproduce the outputs"

        model.train_adapter(case)
        model.eval()  # train_adapter switches dropout on
        loss = model(**enc, labels=torch.tensor(LABELS)).loss
        loss.backward()
        params = dict(model.named_parameters(remove_duplicate=False))
        result["loss"] = loss.item()
        result["grads"] = {}
        for layer, unit, tensor in GRADS[case]:
            key = UNIT.format(layer, case, unit) + tensor
            grad = params[key].grad
            grad = torch.zeros_like(params[key]) if grad is None else grad
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
