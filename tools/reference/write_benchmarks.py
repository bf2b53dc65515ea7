#!/usr/bin/env python3
"""BENCHMARKS.md from criterion's estimates (benches/adapters.rs) and two runs of
bench_adapters.py (before and after sinew's, averaged): seconds per call, the ratio sinew /
PyTorch, and GFLOP/s of the forward/backward matmul work against the machine's matmul peak.

    write_benchmarks.py TARGET_DIR TORCH_JSON_BEFORE TORCH_JSON_AFTER > BENCHMARKS.md
"""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

target, before, after = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
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
PEAK = 205  # GFLOP/s: PyTorch's 2048³ f32 matmul here (../shared/notes/cpu-matmul-rates.md)


def sinew(key):
    est = target / "criterion" / key / "new" / "estimates.json"
    return json.loads(est.read_text())["median"]["point_estimate"] / 1e9 if est.exists() else None


cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                     capture_output=True, text=True).stdout.strip()
print("# Benchmarks: sinew vs PyTorch + AdapterHub\n")
print(f"Machine: {cpu}, {os.cpu_count()} cores, {platform.system()}; PyTorch {before['torch']} with "
      f"{before['threads']} threads (mean of a run before and one after sinew's). Written by "
      "`tools/bench-adapters.sh` (criterion `benches/adapters.rs` + `tools/reference/bench_adapters.py`). "
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
print("\nAchieved GFLOP/s (matmul work only; the machine's measured f32 matmul peak is about "
      f"{PEAK} GFLOP/s):\n")
print("| work | GFLOP | PyTorch | ndarray | flex |")
print("|---|---|---|---|---|")
for pattern, flops in WORK.items():
    key = pattern.format("pytorch")
    cells = [f"{flops / torch[key] / 1e9:.0f}"]
    for backend in ["ndarray", "flex"]:
        t = sinew(pattern.format(backend))
        cells.append(f"{flops / t / 1e9:.0f}" if t else "–")
    print(f"| {key.replace('/pytorch', '')} | {flops / 1e9:.0f} | " + " | ".join(cells) + " |")
print("\nThe Speed issue's targets, from the table above (met: yes/no):\n")
print("| target | ndarray | flex |")
print("|---|---|---|")
def ratio(group_case, backend):
    group, case = group_case.split(" ")
    t = sinew(f"{group}/{backend}/{case}")
    return t / torch[f"{group}/pytorch/{case}"] if t else None
def cell(value, ok, fmt="{:.2f}"):
    return "–" if value is None else f"{fmt.format(value)} ({'yes' if ok(value) else 'no'})"
rows = [
    ("training step (seq_bn 32×128) time ratio ≤ 1/1.5 = 0.67 on flex, ≤ 1.0 on ndarray",
     lambda b: cell(ratio("train_step_seq_bn 32x128", b), lambda r: r <= (0.67 if b == "flex" else 1.0))),
    ("inference (64×128, seq_bn) time ratio ≤ 1/1.2 = 0.83",
     lambda b: cell(ratio("inference_64x128 seq_bn", b), lambda r: r <= 0.83)),
    ("Fuse of 8 training step ≤ 1.3× one adapter's (32×64)",
     lambda b: cell((sinew(f"fuse_train_step/{b}/8") or 0) / (sinew(f"train_step_seq_bn/{b}/32x64") or 1), lambda r: r <= 1.3)),
    ("merged LoRA inference within 2% of the bare backbone",
     lambda b: cell((sinew(f"inference_64x128/{b}/lora_merged") or 0) / (sinew(f"inference_64x128/{b}/bare") or 1) - 1, lambda r: abs(r) <= 0.02, "{:+.1%}")),
]
for label, f in rows:
    print(f"| {label} | {f('ndarray')} | {f('flex')} |")
print("\nPeak memory against PyTorch's is not measured yet.")
print(f"\nPyTorch's peak resident memory for the whole script: {before['peak_rss_mib']:.0f} MiB.\n")
print("Reproduce: `tools/bench-adapters.sh` (needs the reference venv, see tools/reference/README.md).")
