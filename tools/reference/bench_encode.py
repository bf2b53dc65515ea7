#!/usr/bin/env python3
"""PyTorch twin of benches/encode.rs: all-MiniLM-L6-v2 forward pass, batch 32 x 128 tokens.

Prints one JSON line: {"torch_threads": N, "seconds_per_batch": median, "sentences_per_s": ...}.
Run by tools/bench-encode.sh beside the criterion bench; never in CI.
"""
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

BATCH, TOKENS = 32, 128


def main():
    default = Path(os.environ.get("SINEW_HOME", Path.home() / ".cache" / "sinew")) / "models" / "all-MiniLM-L6-v2"
    model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    reps = int(os.environ.get("REPS", "10"))
    torch.set_num_threads(os.cpu_count())
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    texts = [
        " ".join(f"Row {i} clause {j}: adapters keep the pretrained encoder frozen while tasks share it." for j in range(20))
        for i in range(BATCH)
    ]
    enc = tok(texts, padding="longest", truncation=True, max_length=TOKENS, return_tensors="pt")
    assert enc["input_ids"].shape == (BATCH, TOKENS)
    times = []
    with torch.inference_mode():
        model(**enc)  # warm-up
        for _ in range(reps):
            t = time.perf_counter()
            model(**enc)
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(json.dumps({"torch_threads": torch.get_num_threads(), "seconds_per_batch": med, "sentences_per_s": BATCH / med}))


if __name__ == "__main__":
    main()
