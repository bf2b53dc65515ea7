#!/usr/bin/env python3
"""PyTorch + AdapterHub twin of benches/adapters.rs: the same work on the same inputs, timed the
same way (median of repeated runs after a warm-up), printed as one JSON object of seconds per
call keyed like criterion's `<group>/<function>` (the backend part is `pytorch`).

    tools/reference/.venv/bin/python tools/reference/bench_adapters.py [--threads N] [--repeats N]
"""
import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

import torch
from adapters import AutoAdapterModel, LoRAConfig, SeqBnConfig
from adapters.composition import Fuse
from transformers import AutoTokenizer

MODEL = Path(os.environ.get("SINEW_HOME", Path.home() / ".cache" / "sinew")) / "models" / "all-MiniLM-L6-v2"


def texts(batch):
    return [
        " ".join(f"Row {i} clause {j}: adapters keep the pretrained encoder frozen while tasks share it." for j in range(20))
        for i in range(batch)
    ]


def inputs(tok, batch, tokens):
    enc = tok(texts(batch), truncation=True, max_length=tokens, padding=True, return_tensors="pt")
    assert enc["input_ids"].shape == (batch, tokens)
    return enc


def timed(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def model_with(adapters):
    model = AutoAdapterModel.from_pretrained(MODEL)
    for i in range(adapters):
        model.add_adapter(f"a{i}", config=SeqBnConfig())
        model.add_classification_head(f"a{i}", num_labels=2)
    return model


def train_step_fn(model, enc, fusion=False):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    labels = torch.arange(enc["input_ids"].shape[0]) % 2

    def step():
        loss = model(**enc, labels=labels).loss
        if fusion:
            loss = loss + model.base_model.get_fusion_regularization_loss()
        loss.backward()
        opt.step()
        opt.zero_grad()

    return step


def peak_memory(work, tok):
    """Three calls of `work` in this process (as benches/peak_memory.rs does), then its peak RSS."""
    model = model_with(1)
    if work == "train_step_seq_bn_32x128":
        model.train_adapter("a0")
        model.train()
        step = train_step_fn(model, inputs(tok, 32, 128))
    else:
        model.set_active_adapters("a0")
        model.eval()
        enc = inputs(tok, 64, 128)

        def step():
            with torch.no_grad():
                model(**enc)
    for _ in range(3):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"backend": "pytorch", "work": work, "peak_rss_mib": round(peak)}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peak", choices=["train_step_seq_bn_32x128", "inference_64x128"],
                        help="only this work, three calls, and print the process's peak memory")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(MODEL)
    if args.peak:
        peak_memory(args.peak, tok)
        return
    out = {}
    for tokens in (64, 128):
        model = model_with(1)
        model.train_adapter("a0")
        model.train()
        out[f"train_step_seq_bn/pytorch/32x{tokens}"] = timed(train_step_fn(model, inputs(tok, 32, tokens)), args.repeats)
    model = model_with(1)
    model.active_head = "a0"
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    out["train_step_full/pytorch/32x64"] = timed(train_step_fn(model, inputs(tok, 32, 64)), args.repeats)
    for n in (2, 4, 8):
        model = model_with(n)
        fuse = Fuse(*[f"a{i}" for i in range(n)])
        model.add_adapter_fusion(fuse, "dynamic")
        name = ",".join(f"a{i}" for i in range(n))
        model.add_classification_head(name, num_labels=2)
        model.train_adapter_fusion(fuse)
        model.active_head = name
        enc = inputs(tok, 32, 64)
        model.eval()
        with torch.no_grad():
            out[f"fuse_inference/pytorch/{n}"] = timed(lambda: model(**enc), args.repeats)
        model.train()
        out[f"fuse_train_step/pytorch/{n}"] = timed(train_step_fn(model, enc, fusion=True), args.repeats)
    model = model_with(1)
    model.add_adapter("lora", config=LoRAConfig())
    model.eval()
    enc = inputs(tok, 64, 128)
    with torch.no_grad():
        for name, active in (("bare", None), ("seq_bn", "a0"), ("lora_unmerged", "lora")):
            model.set_active_adapters(active)
            out[f"inference_64x128/pytorch/{name}"] = timed(lambda: model.base_model(**enc), args.repeats)
        model.merge_adapter("lora")
        out["inference_64x128/pytorch/lora_merged"] = timed(lambda: model.base_model(**enc), args.repeats)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["threads"] = args.threads
    out["torch"] = torch.__version__
    print(json.dumps(out))


if __name__ == "__main__":
    main()
