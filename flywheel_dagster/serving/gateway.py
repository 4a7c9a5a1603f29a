"""The trace-capturing gateway in front of vLLM's OpenAI-compatible server, and the switch-over it runs.

Clients talk to the gateway as to any OpenAI endpoint:
- `POST /v1/chat/completions` (plain or `stream: true`) is forwarded to the current champion's server; each
  completed response is written as one trace record (capture.TraceLog) before the client gets it, with who
  asked (from `serving.user_id_from`: a header your ingress sets, the client's API key, or, only if chosen,
  the body's `user`), the workload (`X-Flywheel-Workload`) and the model version that answered. Whatever
  model name the client sends, the champion answers: the gateway routes.
- `POST /v1/completions`, `GET /v1/models` are forwarded, not captured (no chat turn to learn from).
- Every request is held to `serving.limits` (body size, read with a bound; max_tokens, n, logprobs; the chat
  fields accepted) before it reaches the model server; a refusal names the setting and is counted.
- `GET /health`: the gateway and its upstream.
Operators (bearer token from the state file, loopback only by default):
- `GET /flywheel/status`: version served, counters, log files;
- `POST /flywheel/deploy {"version": V, "health": {...}}`: the switch-over to V (switchover.py): staged,
  health-checked with verified prompts, and only then serving; a staged model that fails is torn down and
  the previous one keeps serving.

Health-check prompts go straight to the staged server, never through the capture: they are benchmark
problems and must not come back as training data.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from flywheel_dagster.config import RequestLimitsConfig
from flywheel_dagster.serving.api_keys import ApiKeys, bearer_token
from flywheel_dagster.serving.capture import TraceLog, iso_now
from flywheel_dagster.serving.health import default_min_correct
from flywheel_dagster.serving.limits import error_response, parse_object, read_request
from flywheel_dagster.serving.sse import ChatStream
from flywheel_dagster.serving.switchover import ModelSpec, ServerFactory, Switchover
from flywheel_dagster.tasks.base import TaskSource


@dataclass
class GatewayStats:
    requests: int = 0
    captured: int = 0
    retried: int = 0  # sent again after a closed keep-alive connection
    not_captured: Counter = field(default_factory=Counter)  # reason -> count (refusals, upstream errors, ...)
    forward_refused: Counter = field(default_factory=Counter)  # the same for /v1/completions and /v1/models
    body_user_ignored: int = 0  # chat requests whose `user` field was dropped (user_id_from is not 'body')
    started: float = field(default_factory=time.time)


class Gateway(Switchover):
    """The gateway's state: the active target and its switch-over (Switchover), the trace log, the counters."""

    def __init__(
        self,
        *,
        task: TaskSource,
        trace_log: TraceLog,
        server_factory: ServerFactory,
        resolve: Callable[[str], ModelSpec],
        token: str,
        served_name: str,
        workload_id: str = "default",
        max_connections: int = 256,
        drain_timeout_s: float = 120.0,
        health_max_tokens: int = 64,
        limits: RequestLimitsConfig | None = None,
        user_id_from: str = "header",
        user_id_header: str = "X-Flywheel-User-Id",
        api_keys: ApiKeys | None = None,
    ) -> None:
        if user_id_from not in ("header", "api_key", "body"):
            raise ValueError(f"user_id_from must be 'header', 'api_key' or 'body', got {user_id_from!r}")
        if user_id_from == "api_key" and api_keys is None:
            raise ValueError("user_id_from 'api_key' needs api_keys (serving.api_keys_file)")
        super().__init__(
            task=task,
            server_factory=server_factory,
            resolve=resolve,
            served_name=served_name,
            drain_timeout_s=drain_timeout_s,
            health_max_tokens=health_max_tokens,
        )
        self.log = trace_log
        self.token = token
        self.workload_id = workload_id
        self.limits = limits or RequestLimitsConfig()
        self.user_id_from = user_id_from
        self.user_id_header = user_id_header
        self.api_keys = api_keys
        self.stats = GatewayStats()
        # Idle connections are dropped before the server's keep-alive timeout (uvicorn's 5 s) can close them
        # under a request; a request that still meets a closed connection is sent again (see _send).
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections, keepalive_expiry=2.0
        )
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0), limits=limits)

    # ---- serving ---------------------------------------------------------------------------------------
    def app(self) -> Starlette:
        routes = [
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.forward, methods=["POST"]),
            Route("/v1/models", self.forward, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/flywheel/status", self.status, methods=["GET"]),
            Route("/flywheel/deploy", self.deploy_endpoint, methods=["POST"]),
        ]

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            yield
            await self.client.aclose()

        return Starlette(routes=routes, lifespan=lifespan)

    async def health(self, request: Request) -> Response:
        target = self.active
        if target is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        try:
            r = await self.client.get(f"{target.url}/health", timeout=5)
            up = r.status_code == 200
        except httpx.HTTPError:
            up = False
        return JSONResponse(
            {"status": "ok" if up else "upstream down", "version": target.version}, status_code=200 if up else 503
        )

    def _caller(self, request: Request) -> tuple[str | None, Response | None]:
        """With user_id_from 'api_key': the user of the request's key, or a 401. Runs before the body is read."""
        if self.user_id_from != "api_key":
            return None, None
        key = bearer_token(request)
        user = self.api_keys.user_for(key) if key else None
        if user is None:
            return None, error_response(
                401,
                "missing or unknown API key: send 'Authorization: Bearer <key>' with a key from serving.api_keys_file",
                headers={"www-authenticate": "Bearer"},
            )
        return user, None

    async def _admit(self, request: Request, chat: bool, refused: Counter) -> tuple[str | None, dict | None] | Response:
        """The caller's user and the request's JSON object held to serving.limits (None for a GET), or the
        refusal, counted in `refused` under its reason."""
        user, refusal = self._caller(request)
        if refusal is not None:
            refused["unauthorized"] += 1
            return refusal
        if request.method != "POST":
            return user, None
        req = await read_request(request, self.limits, chat)
        if isinstance(req, tuple):
            refused[req[0]] += 1
            return req[1]
        return user, req

    async def forward(self, request: Request) -> Response:
        admitted = await self._admit(request, chat=False, refused=self.stats.forward_refused)
        if isinstance(admitted, Response):
            return admitted
        _, req = admitted
        target = self.active
        if target is None:
            return error_response(503, "no model is being served yet")
        if req is None:
            r = await self.client.get(f"{target.url}{request.url.path}", headers=target.server.headers)
            return Response(r.content, status_code=r.status_code, media_type="application/json")
        req["model"] = target.model
        r = await self.client.post(
            f"{target.url}{request.url.path}",
            content=orjson.dumps(req),
            headers={"content-type": "application/json", **target.server.headers},
        )
        return Response(r.content, status_code=r.status_code, media_type="application/json")

    async def chat(self, request: Request) -> Response:
        self.stats.requests += 1
        admitted = await self._admit(request, chat=True, refused=self.stats.not_captured)
        if isinstance(admitted, Response):
            return admitted
        user, req = admitted
        target = self.active
        if target is None:
            self.stats.not_captured["no_model"] += 1
            return error_response(503, "no model is being served yet")
        received = iso_now(self.log.clock)
        # The body's `user` is whatever the client claims. It names the user only with user_id_from 'body', and is
        # neither forwarded nor kept in the recorded request: a second, unverified identity erasure would miss.
        claimed = req.pop("user", None)
        if self.user_id_from == "header":
            user = request.headers.get(self.user_id_header) or None
        elif self.user_id_from == "body":
            user = claimed if isinstance(claimed, str) and claimed else None
        if claimed is not None and self.user_id_from != "body":
            self.stats.body_user_ignored += 1
        workload = request.headers.get("x-flywheel-workload") or self.workload_id
        req["model"] = target.model
        started = time.perf_counter()
        meta = {"model_version": target.version, "gateway": self.log.gateway_id}
        target.inflight += 1
        upstream = self.client.build_request(
            "POST",
            f"{target.url}/v1/chat/completions",
            content=orjson.dumps(req),
            headers={"content-type": "application/json", **target.server.headers},
        )
        try:
            r = await self._send(upstream, stream=bool(req.get("stream")))
        except httpx.HTTPError as err:
            target.inflight -= 1
            self.stats.not_captured["upstream_unreachable"] += 1
            return error_response(502, f"upstream model server unreachable: {type(err).__name__}")
        headers = {"x-flywheel-model-version": target.version}
        if not req.get("stream"):
            target.inflight -= 1
            if r.status_code != 200:
                self.stats.not_captured[f"upstream_http_{r.status_code}"] += 1
                return Response(r.content, status_code=r.status_code, media_type="application/json", headers=headers)
            meta["upstream_ms"] = round((time.perf_counter() - started) * 1000, 2)
            try:
                self._capture(received, req, orjson.loads(r.content), user, workload, meta)
            except OSError as err:  # disk full, say: no answer goes out without its trace
                self.stats.not_captured["capture_failed"] += 1
                return error_response(503, f"the gateway could not record this completion ({err}); retry later")
            return Response(r.content, status_code=200, media_type="application/json", headers=headers)
        if r.status_code != 200:
            body = await r.aread()
            await r.aclose()
            target.inflight -= 1
            self.stats.not_captured[f"upstream_http_{r.status_code}"] += 1
            return Response(body, status_code=r.status_code, media_type="application/json", headers=headers)

        async def relay() -> AsyncIterator[bytes]:
            acc = ChatStream()
            counted = False
            try:
                async for chunk in r.aiter_raw():
                    acc.feed(chunk)
                    yield chunk
                if acc.done:
                    meta["upstream_ms"] = round((time.perf_counter() - started) * 1000, 2)
                    meta["stream"] = True
                    try:
                        self._capture(received, req, acc.response(), user, workload, meta)
                    except OSError:  # the stream went out already: count it
                        self.stats.not_captured["capture_failed"] += 1
                else:
                    self.stats.not_captured["stream_incomplete"] += 1
                counted = True
            finally:
                if not counted:  # the client went away mid-stream: not a completed request
                    self.stats.not_captured["client_disconnected"] += 1
                await r.aclose()
                target.inflight -= 1

        return StreamingResponse(relay(), media_type="text/event-stream", headers=headers)

    async def _send(self, upstream: httpx.Request, stream: bool) -> httpx.Response:
        """Send once more when the connection fails (typically a pooled one the server closed while idle). The
        client gets one answer and one trace is written; a failed attempt may have cost generation time."""
        try:
            return await self.client.send(upstream, stream=stream)
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError):
            self.stats.retried += 1
            return await self.client.send(upstream, stream=stream)

    def _capture(self, received: str, req: dict, resp: dict, user: str | None, workload: str, meta: dict) -> None:
        record = {
            "timestamp": received,
            "request_id": resp.get("id"),
            "user_id": user if isinstance(user, str) else None,
            "workload_id": workload,
            "request": req,
            "response": resp,
            "metadata": meta,
        }
        self.log.append(record)
        self.stats.captured += 1

    # ---- operator endpoints ------------------------------------------------------------------------------
    def _authorized(self, request: Request) -> bool:
        given = bearer_token(request)
        # bytes: compare_digest refuses a str with non-ASCII characters (a header can carry them)
        return given is not None and hmac.compare_digest(given.encode("latin-1"), self.token.encode())

    def status_payload(self) -> dict:
        t = self.active
        return {
            "version": t.version if t else None,
            "model": t.model if t else None,
            "upstream": t.url if t else None,
            "requests": self.stats.requests,
            "captured": self.stats.captured,
            "retried": self.stats.retried,
            "not_captured": dict(self.stats.not_captured),
            "forward_refused": dict(self.stats.forward_refused),
            "body_user_ignored": self.stats.body_user_ignored,
            "user_id_from": self.user_id_from,
            "api_keys": None
            if self.api_keys is None
            else {
                "file": str(self.api_keys.path),
                "keys": len(self.api_keys),
                "reloads": self.api_keys.reloads,
                "error": self.api_keys.error,
            },
            "trace_files": list(self.log.stats.files),
            "history": self.history,
        }

    async def status(self, request: Request) -> Response:
        if not self._authorized(request):
            return error_response(401, "missing or wrong bearer token (see the gateway's state file)")
        return JSONResponse(self.status_payload())

    async def deploy_endpoint(self, request: Request) -> Response:
        if not self._authorized(request):
            return error_response(401, "missing or wrong bearer token (see the gateway's state file)")
        spec = parse_object(await request.body())
        if isinstance(spec, Response):
            return spec
        if not isinstance(spec.get("version"), str):
            return error_response(400, "'version' (a registered model version, as a string) is required")
        health = spec.get("health") or {}
        prompts = health.get("prompts") or []
        if not isinstance(prompts, list) or not all(
            isinstance(p, dict) and {"question", "reference"} <= p.keys() for p in prompts
        ):
            return error_response(400, "'health.prompts' must be a list of {question, reference} objects")
        min_correct = health.get("min_correct", default_min_correct(len(prompts)))
        result = await asyncio.to_thread(self.deploy, spec["version"], prompts, int(min_correct))
        return JSONResponse(result, status_code=200 if result["ok"] else 409)

    def shutdown(self) -> None:
        if self.active is not None:
            self.active.server.stop()
        self.log.close()


def state_path(home: Path) -> Path:
    return home / "serving" / "gateway.json"
