"""Load test of `flywheel serve` on loopback: the same bounded request loop against the bare vLLM server and
through the trace-capturing gateway in front of it.

    .venv/bin/python benchmarks/gateway.py [--requests 2000] [--concurrency 16] [--home DIR]

Prints requests/s and p50/p99 latency of each, the gateway's overhead (gateway minus bare), and checks that
the traces captured equal the requests completed through the gateway (status counter and lines on disk).
Requests are greedy (temperature 0), so both runs generate the same tokens. Without --home a playground
flywheel is bootstrapped into a temporary folder first (about three minutes). The load generator, the
gateway and vLLM share the machine's cores: on two cores the figures are a floor, not a capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bootstrap_home(home: Path) -> None:
    from flywheel_dagster.bootstrap import bootstrap
    from flywheel_dagster.config import build_config
    from flywheel_dagster.resources import local_resources

    cfg = build_config({"preset": "playground"})
    registry = local_resources(home)["mlflow"].registry(cfg.name)
    bootstrap(cfg, registry, home / "models")


async def load(url: str, questions: list[str], concurrency: int, model: str, headers: dict | None = None) -> dict:
    latencies: list[float] = []
    failed = 0
    queue = list(reversed(questions))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits, headers=headers or {}) as client:

        async def worker() -> None:
            nonlocal failed
            while queue:
                q = queue.pop()
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": q}],
                    "temperature": 0.0,
                    "max_tokens": 64,
                }
                t = time.perf_counter()
                r = await client.post(f"{url}/v1/chat/completions", json=body)
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t)
                else:
                    failed += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "completed": len(latencies),
        "failed": failed,
        "wall_s": wall,
        "rps": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--home", type=Path, help="a bootstrapped playground flywheel home (default: a fresh one)")
    ap.add_argument("--config", type=Path, help="that flywheel's config file (default: the playground preset)")
    args = ap.parse_args()

    from flywheel_dagster.config import build_config
    from flywheel_dagster.serving.client import question_of
    from flywheel_dagster.serving.gateway import state_path
    from flywheel_dagster.serving.upstream import free_port
    from flywheel_dagster.tasks import load_task

    tmp = tempfile.TemporaryDirectory(prefix="gateway-bench-")
    home = args.home or Path(tmp.name) / "home"
    if args.home is None:
        print("bootstrapping a playground flywheel ...", flush=True)
        bootstrap_home(home)
    task = load_task(build_config({"preset": "playground"}))
    questions = [question_of(task, p.prompt) for p in task.traffic(7, args.requests)]
    warmup = questions[:64]

    port = free_port()
    which = ["--config", str(args.config)] if args.config else ["--preset", "playground"]
    cmd = [str(Path(sys.executable).with_name("flywheel")), "serve", "--home", str(home), *which, "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    gateway = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    while True:
        if proc.poll() is not None:
            sys.exit(f"flywheel serve exited: {proc.stdout.read()}")
        try:
            if httpx.get(f"{gateway}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    print(f"flywheel serve up in {time.perf_counter() - started:.0f} s", flush=True)
    state = json.loads(state_path(home).read_text())
    auth = {"authorization": f"Bearer {state['token']}"}
    status = httpx.get(f"{gateway}/flywheel/status", headers=auth).json()
    bare, model = status["upstream"], status["model"]
    bare_auth = {"authorization": f"Bearer {state['upstream_api_key']}"}  # vLLM's own key (loopback only)
    try:
        asyncio.run(load(bare, warmup, args.concurrency, model, bare_auth))
        asyncio.run(load(gateway, warmup, args.concurrency, model))
        results = {"bare vLLM": asyncio.run(load(bare, questions, args.concurrency, model, bare_auth))}
        cpu_before = cpu_seconds(proc.pid)
        results["gateway"] = asyncio.run(load(gateway, questions, args.concurrency, model))
        gateway_cpu = cpu_seconds(proc.pid) - cpu_before
        final = httpx.get(f"{gateway}/flywheel/status", headers=auth).json()
        captured, files = final["captured"], final["trace_files"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    lines = sum(len(Path(f).read_text().splitlines()) for f in files)  # this gateway's files
    completed = results["gateway"]["completed"] + len(warmup)

    print(f"\n{args.requests} requests, {args.concurrency} concurrent, greedy, <= 64 new tokens, playground model")
    print(f"{'':10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}")
    for name, r in results.items():
        print(f"{name:10} {r['rps']:8.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['failed']:7d}")
    g, b = results["gateway"], results["bare vLLM"]
    print(
        f"gateway overhead: p50 {g['p50_ms'] - b['p50_ms']:+.1f} ms, p99 {g['p99_ms'] - b['p99_ms']:+.1f} ms, "
        f"throughput {100 * (g['rps'] / b['rps'] - 1):+.1f}%"
    )
    print(f"gateway process CPU: {1000 * gateway_cpu / max(g['completed'], 1):.1f} ms per request")
    print(
        f"completed through the gateway (with {len(warmup)} warm-up): {completed}; captured (status): {captured}; "
        f"trace lines on disk after shutdown: {lines}; equal: {completed == captured == lines}"
    )


if __name__ == "__main__":
    main()
