#!/usr/bin/env python3
"""The Python server `sinew serve` is measured against: the job done the way users write it today,
FastAPI + transformers + AdapterHub's `adapters`, one model with every adapter and head loaded,
switching the active adapter per request (under a lock: the active adapter is the model's state).
It answers `POST /predict {"inputs", "setup", "raw_scores"?}` like `sinew serve`.

    python serve_adapterhub.py --model DIR --adapter DIR... --port P
    python serve_adapterhub.py --make-adapters DIR --count 16 --model DIR   # seeded seq_bn adapters with heads
"""
import argparse
import sys
import threading
from pathlib import Path
from typing import List, Optional, Union

import torch


def make_adapters(model_dir, out, count):
    """`count` seq_bn adapters with classification heads of 2–4 labels, every weight drawn from a
    seeded normal (AdapterHub initialises the up-projection at zero: outputs would not differ)."""
    from adapters import AutoAdapterModel, SeqBnConfig

    model = AutoAdapterModel.from_pretrained(model_dir)
    Path(out).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        name = f"task{i:02d}"
        model.add_adapter(name, config=SeqBnConfig())
        labels = 2 + i % 3
        model.add_classification_head(name, num_labels=labels, id2label={j: f"label{j}" for j in range(labels)})
        generator = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for key, p in model.named_parameters():
                if f".{name}." in key:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
        model.save_adapter(str(Path(out) / name), name, with_head=True)
        print(Path(out) / name)


def serve(model_dir, adapter_dirs, host, port, threads):
    import uvicorn
    from adapters import AutoAdapterModel
    from fastapi import FastAPI
    from pydantic import BaseModel
    from transformers import AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoAdapterModel.from_pretrained(model_dir)
    names = [model.load_adapter(d) for d in adapter_dirs]
    model.eval()
    lock = threading.Lock()
    app = FastAPI()

    class Predict(BaseModel):
        inputs: Union[str, List[str]]
        setup: str
        raw_scores: Optional[bool] = False

    @app.get("/health")
    def health():
        return {"status": "ok", "adapters": names}

    @app.post("/predict")
    def predict(request: Predict):
        texts = [request.inputs] if isinstance(request.inputs, str) else request.inputs
        batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with lock:
            model.set_active_adapters(request.setup)
            model.active_head = request.setup
            with torch.inference_mode():
                logits = model(**batch).logits
        scores = logits if request.raw_scores else logits.softmax(-1)
        labels = model.config.prediction_heads[request.setup]["label2id"]
        id2label = {v: k for k, v in labels.items()}
        out = []
        for row in scores.tolist():
            ranked = sorted(((id2label[i], s) for i, s in enumerate(row)), key=lambda x: -x[1])
            out.append([{"label": l, "score": s} for l, s in ranked])
        return out[0] if isinstance(request.inputs, str) else out

    print(f"listening on http://{host}:{port}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--adapter", action="append", default=[])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--make-adapters")
    p.add_argument("--count", type=int, default=16)
    a = p.parse_args()
    if a.make_adapters:
        make_adapters(a.model, a.make_adapters, a.count)
        return
    serve(a.model, a.adapter, a.host, a.port, a.threads)


if __name__ == "__main__":
    sys.exit(main())
