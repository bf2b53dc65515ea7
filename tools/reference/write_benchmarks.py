#!/usr/bin/env python3
"""BENCHMARKS.md from one run of tools/bench-adapters.sh: criterion's estimates
(benches/adapters.rs, benches/kernels.rs) and the JSON files the script keeps in
TARGET_DIR/benchmarks/ — bench_adapters.py before and after sinew's run (averaged), the peak
memory of each side, bench_ops.py (PyTorch's ops), tools/bench-gemm.sh and `sinew bench`.

    write_benchmarks.py TARGET_DIR > BENCHMARKS.md
"""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

target = Path(sys.argv[1])
kept = target / "benchmarks"
read = lambda name: json.loads((kept / name).read_text())
before, after = read("torch_before.json"), read("torch_after.json")
memory = {(m["work"], m["backend"]): m["peak_rss_mib"] for m in read("memory.json")}
torch_ops, gemm = read("torch_ops.json"), read("gemm.json")
sinew_bench = [json.loads(l) for l in (kept / "sinew_bench.jsonl").read_text().splitlines() if l]
torch = {k: (before[k] + after[k]) / 2 for k in before if k.count("/") == 2}

# MiniLM-L6: hidden 384, FFN 1536, 6 layers. Forward FLOPs per token per layer: QKV + output
# projections 4·2h², FFN 2·2·h·4h, attention scores and mixing 2·2·s·h.
H, LAYERS = 384, 6


def forward_flops(batch, tokens):
    per_token = LAYERS * (8 * H * H + 16 * H * H + 4 * tokens * H)
    return batch * tokens * per_token


# A frozen-backbone training step: forward, plus the backward's input gradients (≈ one more
# forward); full fine-tuning adds the weight gradients (≈ another).
WORK = {
    "train_step_seq_bn/{}/32x64": 2 * forward_flops(32, 64),
    "train_step_seq_bn/{}/32x128": 2 * forward_flops(32, 128),
    "train_step_full/{}/32x64": 3 * forward_flops(32, 64),
    "inference_64x128/{}/bare": forward_flops(64, 128),
}
REASONS = """
## What changed, and where the targets are missed

The training step and inference run on sinew's own kernels (`crates/sinew-kernels`): one
`FusedOps` method per hot op, each a single multi-threaded, vectorised pass over pooled buffers
with a hand-written backward, instead of Burn 0.21's 5–6 generic ops per GELU, softmax or
LayerNorm; the GEMM crates' AVX-512 kernels are on (GEMM table: about 2× either crate's AVX2
kernels at the model's shapes); a logits-only pass runs the last layer for the first position
only. Against the previous BENCHMARKS.md (same scripts, same 2 cores): training step 32×128 from
2.8 s to 0.74 s (flex) and 0.87 s (ndarray), inference 64×128 from 2.2 s to 0.81–1.03 s, and
minor page faults per inference call from about 600,000 to 6,000 (flex; `sinew bench` table).

- **Inference on flex ≤ 0.85× PyTorch: missed (about 1.0–1.1×).** Inference is GEMM-bound on
  both sides: a `perf record` of `sinew bench --work inference` on flex puts about 76% of the
  time in gemm's AVX-512 micro-kernels, which run at 280–330 GFLOP/s at these shapes (GEMM
  table) — 184 GFLOP of products is about 0.6 s of the 0.8 s, where PyTorch's whole pass takes
  0.8 s. The rest is the bias rows written before each product (about 5%), the attention's
  softmax (4%), LayerNorm (3%) and GELU (3%), all already one vectorised pass each (per-op table:
  sinew's forward ops at or near PyTorch's). Reaching 0.85× would need a GEMM faster than gemm's
  AVX-512 kernels or products fused with their bias and activation (a GEMM epilogue), which
  neither well-kept crate offers.
- **Inference on ndarray** meets its target; it keeps about 190,000 minor page faults per call:
  burn-ndarray's tensors own their `Vec` (its storage type is private), so sinew's pooled buffers
  cannot back them and every output is a fresh allocation. Training on ndarray has none (its
  steady-state buffers are reused by the allocator).
- **Fuse of 8 ≤ 1.3× one adapter: missed (2.1× on flex, 2.6× on ndarray).** Absolute times
  fell most here — sinew's Fuse-8 step is now 0.49× (flex) PyTorch + AdapterHub's, whose own
  Fuse-8 step costs 2.6× its one-adapter step (line under the targets table). The floor is the
  work itself: a dynamic fusion trains a query, key and value projection (hidden × hidden, with
  weight gradients) at every layer — about 32 GFLOP per 32×64 step, on top of the frozen
  backbone's ~90 — and runs the 8 frozen adapters forward and backward (~14 GFLOP more), so
  ≥1.5× by FLOPs alone, before the fusion's softmax, the stack of 8 adapter outputs and their
  gradients (25 MB each per layer). sinew computes the fusion's products reordered
  (`K_n = u_n·W_k + b_k` gives `Q·K_n = u_n·(Q·W_kᵀ) + Q·b_k`, and the value projection after the
  mixture: one hidden × hidden product per token each instead of one per adapter) and its
  per-token scores and mixture in fused kernels (a batched matmul ran one tiny GEMM per token):
  0.92 s → 0.76 s per step on flex, with 97,000 → 4,600 page faults.
- **Merged LoRA within 2% of the bare backbone: met on flex, +5% on ndarray in this run**
  (+0.2% in the previous one). A merged LoRA runs exactly the bare backbone's ops on merged
  weights; the ndarray difference is run-to-run variance of a pass dominated by fresh
  allocations (above).
- **Met**: training step on both backends (0.55× PyTorch on flex, 0.64× on ndarray), peak memory
  well below PyTorch's for training and inference.
- **Fast paths** (last table): the activation cache's later epochs run the step of an adapter in
  layers 3–5 in 0.55–0.59× the time; `Parallel` of two such adapters runs the shared layers once
  (0.71–0.86× two passes); a batch mixing four adapters costs what switching the active adapter
  four times costs (0.92–1.05×).
"""

def sinew(key):
    est = target / "criterion" / key / "new" / "estimates.json"
    return json.loads(est.read_text())["median"]["point_estimate"] / 1e9 if est.exists() else None


cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                     capture_output=True, text=True).stdout.strip()
print("# Benchmarks: sinew vs PyTorch + AdapterHub\n")
print(f"Machine: {cpu}, {os.cpu_count()} cores, {platform.system()}; PyTorch {before['torch']} with "
      f"{before['threads']} threads (mean of a run before and one after sinew's). Written by "
      "`tools/bench-adapters.sh` (criterion `benches/adapters.rs` + `tools/reference/bench_adapters.py`, then the "
      "per-op, GEMM and `sinew bench` tables below). "
      "Times are medians, seconds per call; **ratio = sinew time / PyTorch time** (below 1: sinew is faster).\n")
print("| work | PyTorch s | ndarray s | ratio | flex s | ratio |")
print("|---|---|---|---|---|---|")
for key in torch:
    group, _, case = key.split("/")
    row = [f"{group} {case}", f"{torch[key]:.3f}"]
    for backend in ["ndarray", "flex"]:
        t = sinew(f"{group}/{backend}/{case}")
        row += [f"{t:.3f}", f"{t / torch[key]:.2f}"] if t else ["–", "–"]
    print("| " + " | ".join(row) + " |")
print("\nAchieved GFLOP/s (matmul work only; what the GEMM crates reach at these shapes is in the "
      "GEMM table below):\n")
print("| work | GFLOP | PyTorch | ndarray | flex |")
print("|---|---|---|---|---|")
for pattern, flops in WORK.items():
    key = pattern.format("pytorch")
    cells = [f"{flops / torch[key] / 1e9:.0f}"]
    for backend in ["ndarray", "flex"]:
        t = sinew(pattern.format(backend))
        cells.append(f"{flops / t / 1e9:.0f}" if t else "–")
    print(f"| {key.replace('/pytorch', '')} | {flops / 1e9:.0f} | " + " | ".join(cells) + " |")
print("\nThe Speed II issue's targets, from the table above (met: yes/no):\n")
print("| target | ndarray | flex |")
print("|---|---|---|")
def ratio(group_case, backend):
    group, case = group_case.split(" ")
    t = sinew(f"{group}/{backend}/{case}")
    return t / torch[f"{group}/pytorch/{case}"] if t else None
def mem_ratio(work, backend):
    mine, theirs = memory.get((work, backend)), memory.get((work, "pytorch"))
    return mine / theirs if mine and theirs else None
def cell(value, ok, fmt="{:.2f}"):
    return "–" if value is None else f"{fmt.format(value)} ({'yes' if ok(value) else 'no'})"
rows = [
    ("training step (seq_bn 32×128) time ratio ≤ 1.0 on flex, ≤ 1.3 on ndarray",
     lambda b: cell(ratio("train_step_seq_bn 32x128", b), lambda r: r <= (1.0 if b == "flex" else 1.3))),
    ("inference (64×128, seq_bn) time ratio ≤ 0.85 on flex, ≤ 1.3 on ndarray",
     lambda b: cell(ratio("inference_64x128 seq_bn", b), lambda r: r <= (0.85 if b == "flex" else 1.3))),
    ("Fuse of 8 training step ≤ 1.3× one adapter's (32×64)",
     lambda b: cell((sinew(f"fuse_train_step/{b}/8") or 0) / (sinew(f"train_step_seq_bn/{b}/32x64") or 1), lambda r: r <= 1.3)),
    ("merged LoRA inference within 2% of the bare backbone",
     lambda b: cell((sinew(f"inference_64x128/{b}/lora_merged") or 0) / (sinew(f"inference_64x128/{b}/bare") or 1) - 1, lambda r: abs(r) <= 0.02, "{:+.1%}")),
    ("peak memory of the training step (seq_bn 32×128) ≤ PyTorch's",
     lambda b: cell(mem_ratio("train_step_seq_bn_32x128", b), lambda r: r <= 1.0)),
    ("peak memory of inference (64×128) ≤ PyTorch's",
     lambda b: cell(mem_ratio("inference_64x128", b), lambda r: r <= 1.0)),
]
for label, f in rows:
    print(f"| {label} | {f('ndarray')} | {f('flex')} |")
torch_fuse = torch["fuse_train_step/pytorch/8"] / torch["train_step_seq_bn/pytorch/32x64"]
print(f"\n(PyTorch + AdapterHub's own Fuse-of-8 step costs {torch_fuse:.2f}× its one-adapter step.)")
print("\nPeak resident memory (MiB), each work in a process of its own (model loaded, three calls):\n")
print("| work | PyTorch | ndarray | flex |")
print("|---|---|---|---|")
for work in ["train_step_seq_bn_32x128", "inference_64x128"]:
    cells = [f"{memory[(work, b)]:.0f}" if (work, b) in memory else "–" for b in ["pytorch", "ndarray", "flex"]]
    print(f"| {work} | " + " | ".join(cells) + " |")
print("\nThe fast paths against the plain paths (same run; ratio = fast / plain time):\n")
print("| work | plain | fast | ndarray s (plain → fast) | ratio | flex s (plain → fast) | ratio |")
print("|---|---|---|---|---|---|---|")
for group, plain, fast, label in [
    ("cached_prefix_step", "32x128_from_tokens", "32x128_from_layer_3",
     "adapter in layers 3–5, training step 32×128: from the activation cache's states"),
    ("parallel_2_32x128", "one_pass_each", "parallel", "Parallel of 2 adapters in layers 3–5, 32×128"),
    ("serving_4_adapters_32x64", "switch_per_adapter", "mixed_batch", "4 adapters, 32 texts: one mixed batch"),
]:
    row = [label, plain, fast]
    for backend in ["ndarray", "flex"]:
        p, f = sinew(f"{group}/{backend}/{plain}"), sinew(f"{group}/{backend}/{fast}")
        row += [f"{p:.3f} → {f:.3f}", f"{f / p:.2f}"] if p and f else ["–", "–"]
    print("| " + " | ".join(row) + " |")
print("\nEach fused op at the model's shapes (milliseconds per call, forward / forward + backward with "
      "the gradient of every input; `benches/kernels.rs` for sinew's kernels and Burn's own ops, "
      "`tools/reference/bench_ops.py` for PyTorch's, same run). Burn's attention is its "
      "`module::attention`; the masked softmax has no sinew op of its own (it runs inside sinew's "
      "attention). Forward + backward starts from an output gradient of ones and reads the first "
      "input's gradient back: on the Burn side the seed is a fresh `ones` tensor of Burn's and "
      "the read-back a fresh copy, whose page faults are most of sinew's GELU backward here "
      "(`perf record` of the flex GELU case: 15% in the page-fault handler, 7% in the kernel); "
      "in the model the gradients arrive in pooled buffers:\n")
print("| op | tokens | PyTorch | sinew flex | Burn flex | sinew ndarray | Burn ndarray |")
print("|---|---|---|---|---|---|---|")
OPS = [("gelu", "exact GELU, [tokens, 1536]"), ("add_layer_norm", "residual add + LayerNorm, [tokens, 384]"),
       ("attention", "attention core, 12 heads × 32, key mask"), ("masked_softmax", "softmax(scores + mask), [b, 12, 128, 128]"),
       ("linear_384x1536", "linear 384 → 1536 with bias")]
def op_cell(group, who):
    times = []
    for kind in ("forward", "forward_backward"):
        # criterion writes a function id "flex/sinew" as the folder "flex_sinew".
        key = f"{group}/{who}/{kind}" if who == "pytorch" else f"{group}/{who.replace('/', '_')}/{kind}"
        t = torch_ops.get(key) if who == "pytorch" else sinew(key)
        times.append(f"{t * 1e3:.1f}" if t else "–")
    return " / ".join(times) if any(t != "–" for t in times) else "–"
for size in ("32x128", "64x128"):
    for op, label in OPS:
        group = f"op_{op}_{size}"
        cells = [op_cell(group, who) for who in ("pytorch", "flex/sinew", "flex/burn", "ndarray/sinew", "ndarray/burn")]
        print(f"| {label} | {size.replace('x', '×')} | " + " | ".join(cells) + " |")
print("\nThe GEMM crates at the model's shapes (GFLOP/s, both cores; `tools/bench-gemm.sh`: "
      "benches/gemm.rs with each crate's AVX-512 kernels compiled out and in). gemm is flex's and "
      "sinew's fused linear's; matrixmultiply is ndarray's. sinew turns on `gemm/x86-v4` and "
      "`matrixmultiply/avx512`:\n")
print("| rows × in × out, product | gemm | gemm + x86-v4 | matrixmultiply | matrixmultiply + avx512 |")
print("|---|---|---|---|---|")
groups = sorted({k.split("/")[0] for k in gemm}, key=lambda g: [int(x) if x.isdigit() else x for x in g.replace("_", "x").split("x")])
for g in groups:
    _, shape, product = g.split("_", 2)
    cells = [f"{gemm[k]:.0f}" if k in gemm else "–" for k in (f"{g}/gemm", f"{g}/gemm+avx512", f"{g}/matrixmultiply", f"{g}/matrixmultiply+avx512")]
    print(f"| {shape.replace('x', ' × ')}, {product} | " + " | ".join(cells) + " |")
print("\n`sinew bench` (release build, 5 calls after a warm-up; minor page faults per call from "
      "`getrusage`):\n")
print("| work | backend | batch × seq | median s | min s | max s | minor page faults per call |")
print("|---|---|---|---|---|---|---|")
for r in sinew_bench:
    print(f"| {r['work']} ({r['adapter']}) | {r['backend']} | {r['batch']}×{r['seq']} | {r['median_s']:.3f} | "
          f"{r['min_s']:.3f} | {r['max_s']:.3f} | {r['minor_faults']:.0f} |")
print(REASONS)
print("Reproduce: `tools/bench-adapters.sh` (needs the reference venv, see tools/reference/README.md); "
      "`write_benchmarks.py TARGET_DIR` re-renders this page from the measurements it kept.")
# The serving section (tools/bench-serve.sh) is measured on its own: kept from its last run.
serve = kept / "serve.md"
if serve.exists():
    print("\n" + serve.read_text())
