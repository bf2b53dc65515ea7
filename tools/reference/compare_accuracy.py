#!/usr/bin/env python3
"""sinew vs AdapterHub: the same training recipe on the same data, test accuracy side by side.

Stage one trains a seq_bn adapter (ST-A) on each source task; stage two fuses them (dynamic
AdapterFusion) for the target task. Both sides read the same split files that `sinew fetch`
wrote ($SINEW_HOME/data/<task>/{train_500,dev,test}.jsonl: no subsampling on either side), use
the same hyperparameters (epochs, batch 16, AdamW with weight decay 0.01, linear warmup over
10% of the steps then linear decay, gradient-norm clipping at 1.0, max length 64, dropout on,
best epoch by dev macro-F1), the same head (AdapterHub's default classification head on the
first token) and the same seeds; only the batch order differs (sinew buckets by length).
Runs are interleaved (AdapterHub, then sinew, per seed) and the mean over seeds goes into
docs/accuracy.md.

    cargo build --features flex,wgpu            # the sinew binary this script runs
    tools/reference/.venv/bin/python tools/reference/compare_accuracy.py [--seeds 13,14,15]
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from adapters import AutoAdapterModel
from adapters.composition import Fuse
from transformers import AutoTokenizer, get_linear_schedule_with_warmup

ROOT = Path(__file__).resolve().parents[2]
HOME = Path(os.environ.get("SINEW_HOME", Path.home() / ".cache" / "sinew"))
MODEL = HOME / "models" / "all-MiniLM-L6-v2"
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache" / "sinew-target"))
SINEW = TARGET_DIR / "debug" / "sinew"
SOURCES = ["trec", "rt_polarity"]
TARGET = "vader_tweets"
SPLIT = "train_500"
ADAPTER = dict(epochs=5, lr=1e-3)
FUSION = dict(epochs=5, lr=5e-4)
BATCH, MAX_LEN = 16, 64


def read(task, split):
    with open(HOME / "data" / task / f"{split}.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def labels_of(task):
    return json.load(open(HOME / "data" / task / "manifest.json"))["labels"]


def scores(gold, pred, k):
    gold, pred = np.array(gold), np.array(pred)
    f1s = []
    for c in range(k):
        tp = np.sum((gold == c) & (pred == c))
        denom = np.sum(gold == c) + np.sum(pred == c)
        if denom > 0:
            f1s.append(2 * tp / denom)
    return {"accuracy": float(np.mean(gold == pred)), "macro_f1": float(np.mean(f1s))}


def batches(tok, examples, labels, shuffle, rng):
    order = list(range(len(examples)))
    if shuffle:
        rng.shuffle(order)
    for i in range(0, len(order), BATCH):
        part = [examples[j] for j in order[i:i + BATCH]]
        enc = tok([e["text"] for e in part], padding=True, truncation=True, max_length=MAX_LEN,
                  return_tensors="pt")
        enc["labels"] = torch.tensor([labels.index(e["label"]) for e in part])
        yield enc


def evaluate(model, tok, examples, labels):
    model.eval()
    pred, gold = [], []
    with torch.no_grad():
        for enc in batches(tok, examples, labels, False, None):
            gold += enc.pop("labels").tolist()
            pred += model(**enc).logits.argmax(-1).tolist()
    model.train()
    return scores(gold, pred, len(labels))


def fit(model, tok, task, labels, epochs, lr, seed, extra_loss=None):
    """The loop sinew's trainer runs, in PyTorch."""
    train, dev = read(task, SPLIT), read(task, "dev")
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    steps = epochs * ((len(train) + BATCH - 1) // BATCH)
    sched = get_linear_schedule_with_warmup(opt, int(np.ceil(0.1 * steps)), steps)
    best, best_state = None, None
    model.train()
    for epoch in range(epochs):
        for enc in batches(tok, train, labels, True, rng):
            loss = model(**enc).loss
            if extra_loss is not None:
                loss = loss + extra_loss()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
        s = evaluate(model, tok, dev, labels)
        if best is None or s["macro_f1"] > best["macro_f1"]:
            best = s
            best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in best_state:
                p.copy_(best_state[n])
    return evaluate(model, tok, read(task, "test"), labels)


def adapterhub(seed):
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(MODEL)
    model = AutoAdapterModel.from_pretrained(MODEL)
    out = {}
    for task in SOURCES:
        labels = labels_of(task)
        model.add_adapter(task, config="seq_bn")
        model.add_classification_head(task, num_labels=len(labels),
                                      id2label=dict(enumerate(labels)))
        model.train_adapter(task)
        model.set_active_adapters(task)
        out[task] = fit(model, tok, task, labels, seed=seed, **ADAPTER)
    labels = labels_of(TARGET)
    fuse = Fuse(*SOURCES)
    model.add_adapter_fusion(fuse, "dynamic")
    name = ",".join(SOURCES)
    model.add_classification_head(name, num_labels=len(labels), id2label=dict(enumerate(labels)))
    model.train_adapter_fusion(fuse)
    model.set_active_adapters(fuse)
    model.active_head = name
    out["fusion"] = fit(model, tok, TARGET, labels, seed=seed,
                        extra_loss=model.base_model.get_fusion_regularization_loss, **FUSION)
    return out


def sinew(seed, work):
    out = {}
    common = ["--split", SPLIT, "--batch-size", str(BATCH), "--max-len", str(MAX_LEN),
              "--seed", str(seed), "--backend", "flex"]
    for task in SOURCES:
        run = work / f"{task}-{seed}"
        subprocess.run([SINEW, "train", "--task", task, "--epochs", str(ADAPTER["epochs"]),
                        "--lr", str(ADAPTER["lr"]), "--out", run, *common], check=True)
        out[task] = json.load(open(run / "results.json"))[0]["test"]
    run = work / f"fusion-{seed}"
    adapters = sum((["--adapter", str(work / f"{t}-{seed}" / t)] for t in SOURCES), [])
    subprocess.run([SINEW, "fuse", "--task", TARGET, *adapters, "--epochs", str(FUSION["epochs"]),
                    "--lr", str(FUSION["lr"]), "--out", run, *common], check=True)
    out["fusion"] = json.load(open(run / "results.json"))[0]["test"]
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="13,14,15")
    parser.add_argument("--work", default="/tmp/sinew-compare")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    work = Path(args.work)
    subprocess.run(["rm", "-rf", work], check=True)
    work.mkdir(parents=True)
    subprocess.run([SINEW, "fetch", *sum((["--task", t] for t in SOURCES + [TARGET]), [])], check=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = {}
    started = time.time()
    for seed in seeds:
        rows.setdefault("adapterhub", []).append(adapterhub(seed))
        rows.setdefault("sinew", []).append(sinew(seed, work))
        print(json.dumps({"seed": seed, **{k: v[-1] for k, v in rows.items()}}), flush=True)
    runs = [(t, f"ST-A {t} ({SPLIT})") for t in SOURCES] + [("fusion", f"Fuse({', '.join(SOURCES)}) on {TARGET} ({SPLIT})")]
    lines = [
        "# Accuracy: sinew vs AdapterHub",
        "",
        "Written by `tools/reference/compare_accuracy.py` (see its docstring for the recipe). Test",
        f"accuracy, mean over seeds {args.seeds}; sinew on its flex backend, AdapterHub {__import__('adapters').__version__}",
        f"with torch {torch.__version__}; {time.time() - started:.0f} s in all on this machine ({os.cpu_count()} cores).",
        "",
        "| run | sinew | AdapterHub | sinew − AdapterHub (points) | per seed (sinew / AdapterHub) |",
        "|---|---|---|---|---|",
    ]
    for key, label in runs:
        s = [r[key]["accuracy"] for r in rows["sinew"]]
        a = [r[key]["accuracy"] for r in rows["adapterhub"]]
        per = ", ".join(f"{x:.3f} / {y:.3f}" for x, y in zip(s, a))
        lines.append(f"| {label} | {np.mean(s):.4f} | {np.mean(a):.4f} | {100 * (np.mean(s) - np.mean(a)):+.2f} | {per} |")
    lines += ["", "Reproduce:", "", "```sh", "cargo build --features flex,wgpu",
              f"tools/reference/.venv/bin/python tools/reference/compare_accuracy.py --seeds {args.seeds}", "```", ""]
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / "accuracy.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
