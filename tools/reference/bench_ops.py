#!/usr/bin/env python3
"""PyTorch's twin of benches/kernels.rs: the transformer's hot ops one by one at all-MiniLM-L6-v2's
shapes (hidden 384, 12 heads of 32, FFN 1536) for the training step (32 × 128 tokens) and
inference (64 × 128), forward and forward + backward, timed as the bench times them (median
after a warm-up). Prints one JSON object of seconds per call keyed like criterion's
`<group>/<function>` (the backend part is `pytorch`).

    tools/reference/.venv/bin/python tools/reference/bench_ops.py [--threads N] [--repeats N]
"""
import argparse
import json
import os

import torch
import torch.nn.functional as F

from bench_adapters import timed  # the same warm-up and median

HIDDEN, HEADS, FFN = 384, 12, 1536


def works(batch, seq):
    """(name, forward, forward + backward) at one size; inputs drawn once, as the Rust bench does."""
    g = torch.Generator().manual_seed(0)
    rows = batch * seq
    rand = lambda *shape: torch.randn(*shape, generator=g)
    x_ffn = rand(rows, FFN)
    x_hidden, residual = rand(rows, HIDDEN), rand(rows, HIDDEN)
    gamma, beta = torch.ones(HIDDEN), torch.zeros(HIDDEN)
    q, k, v = (rand(batch, HEADS, seq, HIDDEN // HEADS) for _ in range(3))
    keep = torch.ones(batch, seq)
    keep[::3, seq * 3 // 4:] = 0
    bias = ((1 - keep) * torch.finfo(torch.float32).min).view(batch, 1, 1, seq)
    w_in, b_in = rand(HIDDEN, FFN) * 0.05, rand(FFN)

    def grad_of(fn, *inputs):
        inputs = [t.clone().requires_grad_(True) for t in inputs]
        ones = torch.ones(fn(*inputs).shape)

        def run():
            for t in inputs:
                t.grad = None  # as Burn: fresh gradients each call, no accumulation
            fn(*inputs).backward(ones)
        return run

    gelu = lambda x: F.gelu(x)
    norm = lambda x, r: F.layer_norm(x + r, (HIDDEN,), gamma, beta, 1e-12)
    attention = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    softmax = lambda s: F.softmax(s + bias, dim=-1)
    scores = rand(batch, HEADS, seq, seq)
    linear = lambda x: F.linear(x, w_in.t(), b_in)
    return [
        ("gelu", lambda: gelu(x_ffn), grad_of(gelu, x_ffn)),
        ("add_layer_norm", lambda: norm(x_hidden, residual), grad_of(norm, x_hidden, residual)),
        ("attention", lambda: attention(q, k, v), grad_of(attention, q, k, v)),
        ("masked_softmax", lambda: softmax(scores), grad_of(softmax, scores)),
        ("linear_384x1536", lambda: linear(x_hidden), grad_of(linear, x_hidden)),
    ]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = {}
    for batch, seq in ((32, 128), (64, 128)):
        for name, forward, backward in works(batch, seq):
            with torch.no_grad():
                out[f"op_{name}_{batch}x{seq}/pytorch/forward"] = timed(forward, args.repeats)
            out[f"op_{name}_{batch}x{seq}/pytorch/forward_backward"] = timed(backward, args.repeats)
    out["threads"] = args.threads
    out["torch"] = torch.__version__
    print(json.dumps(out))


if __name__ == "__main__":
    main()
