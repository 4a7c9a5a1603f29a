"""The switch-over: which model answers the gateway's traffic, and how that changes without a dropped request.

`deploy(V)` stages version V (a LoRA adapter loaded at runtime into the running server when V is an adapter of
the served base, else a new server process), health-checks the staged model with verified prompts, and only
then moves traffic to it; the old target is drained and retired. A staged model that fails is torn down and
the previous one keeps serving.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from flywheel_dagster.serving.capture import iso_now
from flywheel_dagster.serving.health import health_check
from flywheel_dagster.serving.upstream import UpstreamError, VllmServer, free_port
from flywheel_dagster.tasks.base import TaskSource


@dataclass(frozen=True)
class ModelSpec:
    version: str
    model_dir: str  # full weights (for an adapter: merged, used when no server of its base runs)
    adapter_dir: str | None = None
    base_dir: str | None = None


@dataclass
class Target:
    """What answers traffic: a server process, and the model name on it (its served name or a LoRA name)."""

    server: VllmServer
    model: str
    version: str
    inflight: int = 0

    @property
    def url(self) -> str:
        return self.server.url


# (model_dir, enable_lora, port) -> a VllmServer, not started
ServerFactory = Callable[[str, bool, int], VllmServer]


class Switchover:
    """The active target and the moves between targets (the Gateway is one: its routes send traffic to `active`)."""

    def __init__(
        self,
        *,
        task: TaskSource,
        server_factory: ServerFactory,
        resolve: Callable[[str], ModelSpec],
        served_name: str,
        drain_timeout_s: float = 120.0,
        health_max_tokens: int = 64,
    ) -> None:
        self.task = task
        self.server_factory = server_factory
        self.resolve = resolve
        self.served_name = served_name
        self.drain_timeout_s = drain_timeout_s
        self.health_max_tokens = health_max_tokens
        self.active: Target | None = None
        self.history: list[dict] = []
        self.on_switch: Callable[[], None] = lambda: None  # called after traffic moved (serve rewrites its state)
        self._deploy_lock = threading.Lock()

    def start(self, version: str) -> None:
        """Bring up the first server for `version` (no health gate: it is what serves already)."""
        target = self._stage(self.resolve(version), current=None)
        self.active = target
        self.history.append({"at": iso_now(), "version": version, "method": "start"})

    def deploy(self, version: str, prompts: list[dict], min_correct: int) -> dict:
        """Stage `version`, health-check it, switch traffic to it, drain and retire the old target."""
        with self._deploy_lock:
            old = self.active
            started = time.perf_counter()
            try:
                spec = self.resolve(version)
                staged = self._stage(spec, current=old)
            except (UpstreamError, RuntimeError, ValueError) as err:
                return {
                    "ok": False,
                    "version": version,
                    "reason": f"could not start version {version}: {err}",
                    "serving": old.version if old else None,
                }
            if old is not None and staged.server is old.server:
                method = "lora" if staged.model != self.served_name else "base"  # no new process either way
            else:
                method = "restart"
            health = health_check(self.task, staged.server, staged.model, prompts, min_correct, self.health_max_tokens)
            if not health.ok:
                self._retire(staged, keep=old)
                return {
                    "ok": False,
                    "version": version,
                    "method": method,
                    "reason": f"health check failed for version {version}: {health.reason}; "
                    f"version {old.version if old else None} keeps serving",
                    "health": health.__dict__,
                    "serving": old.version if old else None,
                }
            self.active = staged  # from here on new requests go to the staged model
            self.on_switch()
            if old is not None:
                self._drain(old)
                self._retire(old, keep=staged)
            self.history.append(
                {"at": iso_now(), "version": version, "method": method, "previous": old.version if old else None}
            )
            return {
                "ok": True,
                "version": version,
                "method": method,
                "previous": old.version if old else None,
                "reason": f"serving version {version} ({method}); health check: {health.reason}",
                "health": health.__dict__,
                "seconds": round(time.perf_counter() - started, 1),
                "serving": version,
            }

    def _stage(self, spec: ModelSpec, current: Target | None) -> Target:
        if (
            spec.adapter_dir
            and current is not None
            and current.server.model_dir == spec.base_dir
            and current.server.enable_lora
        ):
            name = f"{self.served_name}-v{spec.version}"
            current.server.load_adapter(name, spec.adapter_dir)
            return Target(current.server, name, spec.version)
        if not spec.adapter_dir and current is not None and current.server.model_dir == spec.model_dir:
            return Target(current.server, self.served_name, spec.version)  # back from an adapter to its base
        if spec.adapter_dir:
            server = self.server_factory(spec.base_dir, True, free_port())
            server.start()
            name = f"{self.served_name}-v{spec.version}"
            try:
                server.load_adapter(name, spec.adapter_dir)
            except UpstreamError:
                server.stop()
                raise
            return Target(server, name, spec.version)
        server = self.server_factory(spec.model_dir, False, free_port())
        server.start()
        return Target(server, self.served_name, spec.version)

    def _drain(self, old: Target) -> None:
        deadline = time.monotonic() + self.drain_timeout_s
        while old.inflight > 0 and time.monotonic() < deadline:
            time.sleep(0.05)

    def _retire(self, target: Target, keep: Target | None) -> None:
        """Stop what `target` alone used: its LoRA adapter, or its server when `keep` is elsewhere."""
        if keep is not None and keep.server is target.server:
            if target.model != keep.model and target.model in target.server.adapters:
                try:
                    target.server.unload_adapter(target.model)
                except UpstreamError:
                    pass  # an adapter left loaded costs memory, not correctness: traffic is routed by name
            return
        target.server.stop()
