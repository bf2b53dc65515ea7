#!/usr/bin/env python3
"""Load benchmark of `sinew serve` (stdlib only): throughput and p50/p99 latency at 1, 8 and 64
concurrent clients, for 1 adapter and for 16 adapters mixed at random, against the same server
with batching off (`--max-batch-requests 1`) and against a Python server doing the same job the
way users write it (tools/reference/serve_adapterhub.py: FastAPI + transformers + AdapterHub), in
one run; and the memory each adapter adds. Traffic goes to 127.0.0.1 only; every load is bounded
in requests and in seconds. Writes the results as JSON and as BENCHMARKS.md's serving section.

    python3 tools/bench_serve.py --sinew target/release/sinew --python tools/reference/.venv/bin/python
"""
import argparse
import http.client
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = Path(os.environ.get("SINEW_HOME", Path.home() / ".cache" / "sinew")) / "models" / "all-MiniLM-L6-v2"
TEXTS = [
    "The film was a delight from start to finish.",
    "Service was slow and the soup arrived cold.",
    "Where can I find the nearest train station?",
    "Stocks rallied after the central bank held rates steady.",
    "I would not recommend this phone to anyone.",
    "The committee will publish its report next week.",
    "What a wonderful surprise, thank you so much!",
    "Battery life is fine but the screen scratches easily.",
    "Who wrote the novel that the series is based on?",
    "Heavy rain is expected across the region tomorrow.",
    "Congratulations, you have won a free cruise, reply now!",
    "The update fixed the crash but the app is still sluggish.",
    "How many moons does Jupiter have?",
    "Our team shipped the release two days early.",
    "That was the worst customer service I have ever had.",
    "The museum reopens on Saturday with a new exhibition.",
]
BEGIN, END = "<!-- serve:begin -->", "<!-- serve:end -->"


def start(command):
    """Starts a server that prints `listening on http://HOST:PORT` first; returns (process, port)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    m = re.match(r"listening on http://127\.0\.0\.1:(\d+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"{command[0]} did not start: {line!r}")
    port = int(m.group(1))
    for _ in range(600):  # uvicorn prints before it binds
        try:
            if request(port, "GET", "/health")[0] == 200:
                return proc, port
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{command[0]} never answered /health")


def request(port, method, path, body=None, conn=None):
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    data = json.dumps(body) if body is not None else None
    conn.request(method, path, body=data, headers={"content-type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    if own:
        conn.close()
    return response.status, payload


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024


def load(port, setups, clients, per_client, seconds, seed):
    """`clients` threads, each sending `per_client` one-text /predict requests (a random text and a
    random setup of `setups`, seeded per client) over its own keep-alive connection, all stopping at
    `seconds`. Returns throughput (req/s) and the latencies' p50 and p99 in milliseconds."""
    latencies, errors, lock = [], [], threading.Lock()
    stop_at = time.perf_counter() + seconds
    barrier = threading.Barrier(clients + 1)

    def client(k):
        rng = random.Random(seed * 1000 + k)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        mine = []
        barrier.wait()
        for _ in range(per_client):
            if time.perf_counter() > stop_at:
                break
            body = {"inputs": [rng.choice(TEXTS)], "setup": rng.choice(setups)}
            t = time.perf_counter()
            status, _ = request(port, "POST", "/predict", body, conn)
            mine.append(time.perf_counter() - t)
            if status != 200:
                with lock:
                    errors.append(status)
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    begin = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - begin
    if errors:
        raise SystemExit(f"{len(errors)} requests failed: {sorted(set(errors))}")
    latencies.sort()
    q = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000
    return {"requests": len(latencies), "seconds": wall, "throughput": len(latencies) / wall,
            "p50_ms": q(0.50), "p99_ms": q(0.99)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sinew", default=str(Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/sinew-target")) / "release" / "sinew"))
    p.add_argument("--python", default=str(ROOT / "tools/reference/.venv/bin/python"))
    p.add_argument("--backend", default="flex")
    p.add_argument("--requests", type=int, default=512, help="requests per load (split over the clients)")
    p.add_argument("--seconds", type=float, default=60, help="longest a load runs")
    p.add_argument("--out", default=str(Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/sinew-target")) / "benchmarks"))
    p.add_argument("--write", default=str(ROOT / "BENCHMARKS.md"))
    a = p.parse_args()
    out = Path(a.out)
    adapters_dir = out / "serve-adapters"
    if not (adapters_dir / "task15").exists():
        subprocess.run([a.python, str(ROOT / "tools/reference/serve_adapterhub.py"), "--model", str(MODEL),
                        "--make-adapters", str(adapters_dir), "--count", "16"], check=True, stdout=subprocess.DEVNULL)
    names = [f"task{i:02d}" for i in range(16)]
    adapter_args = [x for n in names for x in ("--adapter", str(adapters_dir / n))]
    sinew = [a.sinew, "serve", "--port", "0", "--backend", a.backend, "--model", str(MODEL)]
    servers = [
        ("sinew serve", sinew + adapter_args),
        ("sinew serve, batching off", sinew + adapter_args + ["--max-batch-requests", "1"]),
        ("FastAPI + AdapterHub", [a.python, str(ROOT / "tools/reference/serve_adapterhub.py"), "--model", str(MODEL),
                                  "--port", "0"] + adapter_args),
    ]
    results = {"backend": a.backend, "cores": os.cpu_count(), "loads": []}
    for label, command in servers:
        if label.startswith("FastAPI"):
            # uvicorn takes no port 0 and prints nothing: pick a free port here.
            import socket
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            command[command.index("--port") + 1] = str(s.getsockname()[1])
            s.close()
        proc, port = start(command)
        try:
            for n in names:  # warm-up: every adapter once
                assert request(port, "POST", "/predict", {"inputs": [TEXTS[0]], "setup": n})[0] == 200
            for mix, setups in (("1 adapter", names[:1]), ("16 adapters mixed", names)):
                for clients in (1, 8, 64):
                    per_client = max(1, a.requests // clients) if clients > 1 else max(32, a.requests // 8)
                    r = load(port, setups, clients, per_client, a.seconds, seed=clients)
                    r.update(server=label, mix=mix, clients=clients)
                    results["loads"].append(r)
                    print(json.dumps(r), file=sys.stderr)
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    # Memory: the same server with 1 and with 16 adapters, once they are loaded (what holding an
    # adapter costs) and after one request each (adds the heap the passes grew: working memory).
    rss, served = {}, {}
    for count in (1, 16):
        proc, port = start(sinew + adapter_args[: 2 * count])
        try:
            rss[count] = rss_mib(proc.pid)
            for n in names[:count]:
                assert request(port, "POST", "/predict", {"inputs": [TEXTS[0]], "setup": n})[0] == 200
            listed = json.loads(request(port, "GET", "/adapters")[1])
            params = {x["name"]: x["parameters"] for x in listed["adapters"]}
            served[count] = rss_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    # AdapterHub's classification head: Linear(384, 384), tanh, Linear(384, labels).
    head_params = [384 * 384 + 384 + 384 * (2 + i % 3) + (2 + i % 3) for i in range(16)]
    weights_mib = statistics.mean((params[n] + h) * 4 for n, h in zip(names, head_params)) / 2**20
    results["memory"] = {"rss_1_mib": rss[1], "rss_16_mib": rss[16],
                         "per_adapter_mib": (rss[16] - rss[1]) / 15,
                         "served_1_mib": served[1], "served_16_mib": served[16],
                         "per_adapter_served_mib": (served[16] - served[1]) / 15,
                         "weights_per_adapter_mib": weights_mib}
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(json.dumps(results, indent=1))
    section = markdown(results, a)
    (out / "serve.md").write_text(section + "\n")
    path = Path(a.write)
    text = path.read_text() if path.exists() else ""
    if BEGIN in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
    print(section)


def markdown(r, a):
    def find(server, mix, clients):
        return next(x for x in r["loads"] if x["server"] == server and x["mix"] == mix and x["clients"] == clients)

    rows = ["| server | adapters | clients | requests | req/s | p50 ms | p99 ms |", "|---|---|---:|---:|---:|---:|---:|"]
    for x in r["loads"]:
        rows.append(f"| {x['server']} | {x['mix']} | {x['clients']} | {x['requests']} | {x['throughput']:.1f} | "
                    f"{x['p50_ms']:.1f} | {x['p99_ms']:.1f} |")
    s1 = find("sinew serve", "1 adapter", 64)["throughput"]
    s16 = find("sinew serve", "16 adapters mixed", 64)["throughput"]
    py16 = find("FastAPI + AdapterHub", "16 adapters mixed", 64)["throughput"]
    py1 = find("FastAPI + AdapterHub", "1 adapter", 64)["throughput"]
    off16 = find("sinew serve, batching off", "16 adapters mixed", 64)["throughput"]
    p8 = [find("sinew serve", m, 8) for m in ("1 adapter", "16 adapters mixed")]
    m = r["memory"]
    ok = lambda c: "met" if c else "**not met**"
    targets = [
        f"| 16 adapters mixed vs 1 adapter, 64 clients | ≥ 0.8× | {s16 / s1:.2f}× | {ok(s16 / s1 >= 0.8)} |",
        f"| sinew vs FastAPI + AdapterHub, 64 clients (16 mixed / 1 adapter) | ≥ 2× | {s16 / py16:.2f}× / {s1 / py1:.2f}× | {ok(s16 / py16 >= 2 and s1 / py1 >= 2)} |",
        f"| p99 / p50 at 8 clients (1 adapter / 16 mixed) | ≤ 3 | {p8[0]['p99_ms'] / p8[0]['p50_ms']:.2f} / {p8[1]['p99_ms'] / p8[1]['p50_ms']:.2f} | "
        f"{ok(all(x['p99_ms'] <= 3 * x['p50_ms'] for x in p8))} |",
        f"| memory per adapter loaded vs its weights | ≤ 1× | {m['per_adapter_mib'] / m['weights_per_adapter_mib']:.3f}× "
        f"({m['per_adapter_mib'] * 1024:.0f} KiB vs {m['weights_per_adapter_mib'] * 1024:.0f} KiB) | "
        f"{ok(m['per_adapter_mib'] <= m['weights_per_adapter_mib'])} |",
    ]
    return "\n".join([
        BEGIN,
        "## Serving: `sinew serve` under load",
        "",
        f"Reproduce: `tools/bench-serve.sh` (runs `tools/bench_serve.py` on a release build; `--backend "
        f"{r['backend']}`, {r['cores']} cores; the load generator runs on the same cores). One-text `/predict` requests over keep-alive connections, random texts, random "
        "setups among 16 seq_bn adapters with heads (made by AdapterHub, seeded); each load bounded to "
        f"{a.requests} requests and {a.seconds:.0f} s. Batching off is `--max-batch-requests 1`. The Python server is "
        "`tools/reference/serve_adapterhub.py`: FastAPI + transformers + AdapterHub, one model with all adapters "
        "loaded, switching the active adapter per request under a lock.",
        "",
        *rows,
        "",
        "| target | goal | measured | |",
        "|---|---|---|---|",
        *targets,
        "",
        f"Batching off, 16 mixed at 64 clients: {off16:.1f} req/s, so batching gives {s16 / off16:.2f}×. "
        f"Memory: {m['rss_1_mib']:.1f} MiB resident with 1 adapter loaded, {m['rss_16_mib']:.1f} MiB with 16; after one "
        f"request each, {m['served_1_mib']:.1f} and {m['served_16_mib']:.1f} MiB "
        f"({m['per_adapter_served_mib'] * 1024:.0f} KiB per adapter: the heap the passes grew counts too). "
        f"Weights are the adapter's parameters and its head's, in f32; a loaded adapter holds "
        f"{(m['per_adapter_mib'] - m['weights_per_adapter_mib']) * 1024:+.0f} KiB beside them (its catalog entry: name, "
        "path, config, head labels; the tensors' headers).",
        END,
    ])


if __name__ == "__main__":
    main()
