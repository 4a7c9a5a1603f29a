"""vLLM on the CPU: engine start and throughput in one process (the default here) against vLLM's worker processes.

    .venv/bin/python benchmarks/vllm_cpu.py [--requests 160] [--concurrency 32] [--prompts 64]
    .venv/bin/python benchmarks/vllm_cpu.py --multiprocess      # the same with VLLM_ENABLE_V1_MULTIPROCESSING=1

Prints, for the offline engine (VllmEngine, as the cycle's traffic and benchmark use it): the first and the
second load in one process and the time to sample 4 completions of each prompt; for the OpenAI server behind
`flywheel serve` (VllmServer): the start and the wall time of the requests at the given concurrency. The model
is an untrained playground model built locally (speed does not depend on its weights). Run it alone: on two
cores anything else running skews the figures.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_model(folder: Path) -> Path:
    from flywheel_dagster.base_models import build_playground_model
    from flywheel_dagster.config import build_config
    from flywheel_dagster.tasks.playground import ALPHABET

    cfg = build_config({"preset": "playground"})
    return build_playground_model(cfg.model, ALPHABET, folder / "model", seed=0)


def offline(model: Path, prompts: int) -> dict:
    from flywheel_dagster.engines.base import SamplingSettings
    from flywheel_dagster.engines.vllm_engine import VllmEngine

    out: dict = {}
    settings = SamplingSettings(n=4, temperature=1.0, max_new_tokens=64, seed=1)
    texts = [f"Q:{i}+{i % 7}\n" for i in range(prompts)]
    for k in ("first", "second"):
        started = time.perf_counter()
        engine = VllmEngine(model, device="cpu", max_model_len=128)
        loaded = time.perf_counter()
        done = engine.generate(texts, settings)
        out[f"engine_{k}_load_s"] = round(loaded - started, 1)
        out[f"engine_{k}_generate_s"] = round(time.perf_counter() - loaded, 1)
        out["completions"] = len(done)
        engine.close()
    return out


def server(model: Path, folder: Path, requests: int, concurrency: int) -> dict:
    import httpx

    from flywheel_dagster.serving.upstream import VllmServer, free_port

    srv = VllmServer(
        str(model),
        "bench",
        free_port(),
        "{{ messages[-1]['content'] }}",
        folder / "server.log",
        device="cpu",
        max_model_len=128,
    )
    started = time.perf_counter()
    srv.start()
    start_s = time.perf_counter() - started

    def one(i: int) -> int:
        body = {
            "model": "bench",
            "messages": [{"role": "user", "content": f"Q:{i}+7"}],
            "temperature": 1.0,
            "max_tokens": 64,
            "seed": i,
        }
        return httpx.post(f"{srv.url}/v1/chat/completions", json=body, headers=srv.headers, timeout=300).status_code

    try:
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            codes = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - t0
    finally:
        srv.stop()
    return {
        "server_start_s": round(start_s, 1),
        "requests": requests,
        "concurrency": concurrency,
        "requests_wall_s": round(wall, 1),
        "requests_per_s": round(requests / wall, 1),
        "ok": sum(c == 200 for c in codes),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=160)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--multiprocess", action="store_true", help="vLLM's engine-core and worker processes")
    args = ap.parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if args.multiprocess else "0"
    with tempfile.TemporaryDirectory(prefix="flywheel-vllm-bench-") as tmp:
        model = build_model(Path(tmp))
        figures = {"mode": "multiprocess" if args.multiprocess else "in_process"}
        figures |= offline(model, args.prompts)
        figures |= server(model, Path(tmp), args.requests, args.concurrency)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
