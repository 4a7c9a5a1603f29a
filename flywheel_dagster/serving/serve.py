"""`flywheel serve`: the champion on vLLM's OpenAI server behind the trace-capturing gateway.

The gateway process supervises the vLLM server process(es); it writes a state file
(`$FLYWHEEL_HOME/serving/gateway.json`: its URL, the operator token, the version served) that
`champion_model` and `flywheel rollback` use to switch the running server over. The file is removed on a
clean shutdown; a stale one (a crashed gateway) is recognised because its URL no longer answers.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import FrameType

from flywheel_dagster.config import FlywheelConfig
from flywheel_dagster.registry import BASE_VERSION_TAG, CHAMPION, Registry
from flywheel_dagster.serving.api_keys import ApiKeys
from flywheel_dagster.serving.capture import SERVING_LOGS, TraceLog
from flywheel_dagster.serving.gateway import Gateway, state_path
from flywheel_dagster.serving.switchover import ModelSpec
from flywheel_dagster.serving.upstream import VllmServer, chat_template_for
from flywheel_dagster.tasks import load_task


def logs_dir_for(cfg: FlywheelConfig, home: Path) -> Path:
    """Where served traces go: serving.logs_dir, else the local lake's serving_logs table."""
    return Path(cfg.serving.logs_dir) if cfg.serving.logs_dir else home / "lake" / SERVING_LOGS


def model_spec(registry: Registry, version: str) -> ModelSpec:
    ref = registry.version(version)
    merged = str(registry.local_path(ref))
    if not registry.is_adapter(ref):
        return ModelSpec(version, merged)
    base = registry.version_tags(version)[BASE_VERSION_TAG]
    return ModelSpec(version, merged, str(registry.files_path(ref)), str(registry.local_path(registry.version(base))))


def build_gateway(
    cfg: FlywheelConfig,
    home: Path,
    registry: Registry,
    host: str,
    token: str,
    log_clock: Callable[[], datetime] | None = None,
) -> Gateway:
    task = load_task(cfg)
    s = cfg.serving
    runs = home / "serving" / "servers"
    templates: dict[str, str] = {}
    vllm_args = list(s.vllm_args)
    if not any(a.split("=")[0] == "--override-generation-config" for a in vllm_args):
        # The server-wide cap on generated tokens: it bounds a request that names no max_tokens (the gateway
        # refuses one that names more), without an error where the context leaves less.
        vllm_args += ["--override-generation-config", json.dumps({"max_new_tokens": s.limits.max_tokens})]
    api_keys = ApiKeys(s.api_keys_file) if s.user_id_from == "api_key" else None

    def server_factory(model_dir: str, enable_lora: bool, port: int) -> VllmServer:
        if model_dir not in templates:
            templates[model_dir] = chat_template_for(task, model_dir)
        return VllmServer(
            model_dir=model_dir,
            served_name=s.served_model_name or cfg.name,
            port=port,
            chat_template=templates[model_dir],
            log_path=runs / f"vllm-{port}.log",
            device=cfg.engine.device,
            max_model_len=s.max_model_len,
            memory_fraction=s.memory_fraction,
            kv_cache_bytes=s.kv_cache_bytes,
            enable_lora=enable_lora or s.enable_lora,
            max_lora_rank=s.max_lora_rank,
            extra_args=list(vllm_args),
        )

    trace_log = TraceLog(
        logs_dir_for(cfg, home), fsync_interval_s=s.fsync_interval_s, max_unsynced=s.max_unsynced, clock=log_clock
    )
    return Gateway(
        task=task,
        trace_log=trace_log,
        server_factory=server_factory,
        resolve=lambda v: model_spec(registry, v),
        token=token,
        served_name=s.served_model_name or cfg.name,
        workload_id=s.workload_id,
        health_max_tokens=cfg.benchmark.max_new_tokens,
        limits=s.limits,
        user_id_from=s.user_id_from,
        user_id_header=s.user_id_header,
        api_keys=api_keys,
    )


class GatewayServer:
    """The gateway's HTTP server (uvicorn) and its state file; `run()` blocks, `start_in_thread()` does not."""

    def __init__(self, gateway: Gateway, host: str, port: int, state_file: Path) -> None:
        import uvicorn

        self.gateway = gateway
        self.host, self.port = host, port
        self.state_file = state_file
        config = uvicorn.Config(gateway.app(), host=host, port=port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def write_state(self) -> None:
        """URL, operator token (file mode 0600) and the vLLM process ids (a later start cleans up after a crash)."""
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        active = self.gateway.active
        with os.fdopen(fd, "w") as f:
            json.dump(
                {
                    "url": self.url,
                    "token": self.gateway.token,
                    "pid": os.getpid(),
                    "logs_dir": str(self.gateway.log.dir),
                    "upstream_pgids": [active.server.proc.pid] if active and active.server.proc else [],
                    # the model server's own key, for an operator's direct look (benchmarks/gateway.py)
                    "upstream_api_key": active.server.api_key if active else None,
                },
                f,
            )
        tmp.replace(self.state_file)

    def remove_state(self) -> None:
        try:
            if json.loads(self.state_file.read_text()).get("pid") == os.getpid():
                self.state_file.unlink()
        except (OSError, ValueError):
            pass

    def run(self) -> None:
        self.write_state()
        self.server.run()

    def start_in_thread(self, timeout_s: float = 30.0) -> None:
        import threading
        import time

        self.write_state()
        self.thread = threading.Thread(target=self.server.run, name="gateway", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"gateway did not start on {self.url}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(30)
        self.gateway.shutdown()
        self.remove_state()


def reap_stale(state_file: Path) -> list[int]:
    """Stop the vLLM servers a crashed gateway left behind (their process groups, from its state file)."""
    killed = []
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return killed
    try:
        os.kill(int(state.get("pid", 0)), 0)
        return killed  # that gateway still runs: leave it alone (the caller refuses to start a second one)
    except (ProcessLookupError, ValueError, OverflowError):
        pass
    except PermissionError:
        return killed
    for pgid in state.get("upstream_pgids", []):
        try:
            os.killpg(int(pgid), signal.SIGTERM)
            killed.append(int(pgid))
        except (ProcessLookupError, PermissionError):
            pass
    state_file.unlink(missing_ok=True)
    return killed


class _Stopped(Exception):  # noqa: N818 - a signal, not an error
    pass


def _stop_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signal.Signals(signum).name)


def refuse_a_second_gateway(home: Path) -> Path:
    """The gateway's state file, after stopping what a crashed gateway left; RuntimeError while one still runs
    for this home. Cheap (no registry, no model): the CLI asks it first, so a second `flywheel serve` is refused
    in about a second instead of after loading MLflow."""
    state = state_path(home)
    reaped = reap_stale(state)
    if reaped:
        print(f"stopped {len(reaped)} vLLM server(s) left by a gateway that crashed", flush=True)
    if state.exists():
        raise RuntimeError(f"a gateway already serves this flywheel (see {state}); stop it first")
    return state


def serve(cfg: FlywheelConfig, home: Path, registry: Registry, host: str, port: int, version: str | None) -> None:
    """Run until SIGINT/SIGTERM: start the champion's server, then the gateway in front of it."""
    if version is None:
        ref = registry.alias(CHAMPION)
        if ref is None:
            raise RuntimeError("the registry has no champion yet; run `flywheel bootstrap` first")
        version = ref.version
    state = refuse_a_second_gateway(home)
    gateway = build_gateway(cfg, home, registry, host, secrets.token_urlsafe(24))
    try:
        gateway.start(version)
        http = GatewayServer(gateway, host, port, state)
        gateway.on_switch = http.write_state
        print(f"serving {cfg.name} v{version} at {http.url}/v1 (traces -> {gateway.log.dir})", flush=True)
        # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again with the previous
        # handler in place: make that handler end run() with an exception, so the cleanup below runs.
        signal.signal(signal.SIGTERM, _stop_signal)
        signal.signal(signal.SIGINT, _stop_signal)
        try:
            http.run()
        except _Stopped:
            pass
        finally:
            http.remove_state()
    finally:
        gateway.shutdown()  # fsync + close the trace log, stop the vLLM server(s)
        print(f"stopped; {gateway.stats.captured} traces captured in {gateway.log.dir}", flush=True)
