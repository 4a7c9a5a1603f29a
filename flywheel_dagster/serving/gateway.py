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
- `POST /flywheel/deploy {"version": V, "health": {...}}`: stage V (a LoRA adapter loaded at runtime into
  the running server when V is an adapter of the served base, else a new server process), health-check the
  staged model with verified prompts, and only then move traffic to it; the old server is drained and
  stopped. A staged model that fails is torn down and the previous one keeps serving.

Health-check prompts go straight to the staged server, never through the capture: they are benchmark
problems and must not come back as training data.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import math
import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from flywheel_dagster.config import RequestLimitsConfig
from flywheel_dagster.serving.capture import TraceLog, iso_now
from flywheel_dagster.serving.upstream import UpstreamError, VllmServer, free_port
from flywheel_dagster.tasks.base import TaskSource


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


@dataclass
class GatewayStats:
    requests: int = 0
    captured: int = 0
    retried: int = 0  # sent again after a closed keep-alive connection
    not_captured: Counter = field(default_factory=Counter)  # reason -> count (refusals, upstream errors, ...)
    forward_refused: Counter = field(default_factory=Counter)  # the same for /v1/completions and /v1/models
    body_user_ignored: int = 0  # chat requests whose `user` field was dropped (user_id_from is not 'body')
    started: float = field(default_factory=time.time)


class _Stream:
    """Rebuilds a chat.completion from the server-sent events of a streamed one."""

    def __init__(self) -> None:
        self.buf = b""
        self.done = False
        self.head: dict = {}
        self.choices: dict[int, dict] = {}
        self.usage = None

    def feed(self, chunk: bytes) -> None:
        self.buf += chunk
        while b"\n\n" in self.buf:
            event, self.buf = self.buf.split(b"\n\n", 1)
            for line in event.splitlines():
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    self.done = True
                    continue
                try:
                    obj = orjson.loads(data)
                except orjson.JSONDecodeError:
                    continue
                self._chunk(obj)

    def _chunk(self, obj: dict) -> None:
        for key in ("id", "created", "model"):
            self.head.setdefault(key, obj.get(key))
        if obj.get("usage"):
            self.usage = obj["usage"]
        for ch in obj.get("choices") or []:
            c = self.choices.setdefault(ch.get("index", 0), {"content": [], "reasoning": [], "finish_reason": None})
            delta = ch.get("delta") or {}
            if delta.get("content"):
                c["content"].append(delta["content"])
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                c["reasoning"].append(reasoning)
            if ch.get("finish_reason"):
                c["finish_reason"] = ch["finish_reason"]

    def response(self) -> dict:
        choices = []
        for i, c in sorted(self.choices.items()):
            message = {"role": "assistant", "content": "".join(c["content"])}
            if c["reasoning"]:
                message["reasoning_content"] = "".join(c["reasoning"])
            choices.append({"index": i, "message": message, "finish_reason": c["finish_reason"]})
        out = {**self.head, "object": "chat.completion", "choices": choices}
        if self.usage:
            out["usage"] = self.usage
        return out


@dataclass
class HealthResult:
    ok: bool
    correct: int
    total: int
    needed: int
    reason: str
    answers: list[dict]


def health_check(
    task: TaskSource,
    server: VllmServer,
    model: str,
    prompts: list[dict],
    min_correct: int,
    max_tokens: int,
) -> HealthResult:
    """Greedy answers to verified prompts ({question, reference}) straight from a server; ok if every request
    succeeded and at least min_correct answers verify."""
    answers, correct = [], 0
    target_url = server.url
    with httpx.Client(timeout=120, headers=server.headers) as client:
        for p in prompts:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": p["question"]}],
                "temperature": 0.0,
                "max_tokens": max_tokens,
            }
            try:
                r = client.post(f"{target_url}/v1/chat/completions", json=body)
            except httpx.HTTPError as err:
                return HealthResult(False, correct, len(prompts), min_correct, f"request failed: {err}", answers)
            if r.status_code != 200:
                return HealthResult(
                    False, correct, len(prompts), min_correct, f"HTTP {r.status_code}: {r.text[:200]}", answers
                )
            text = r.json()["choices"][0]["message"].get("content") or ""
            verdict = task.verify(text, p["reference"])
            correct += verdict.correct
            answers.append(
                {
                    "question": p["question"],
                    "reference": p["reference"],
                    "answer": verdict.answer,
                    "correct": verdict.correct,
                }
            )
    ok = correct >= min_correct
    reason = f"{correct}/{len(prompts)} verified prompts answered correctly (needed {min_correct})"
    return HealthResult(ok, correct, len(prompts), min_correct, reason, answers)


class ApiKeysError(RuntimeError):
    """serving.api_keys_file cannot be read or is malformed; the message names the file and the entry."""


_API_KEY = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces: what an Authorization header carries


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's own loader keeps the last of two equal keys: a key listed twice would silently change its user."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the same key twice (line {key_node.start_mark.line + 1})", None
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class ApiKeys:
    """Client API keys -> user ids, from serving.api_keys_file (YAML: `<key>: <user id>`, or
    `sha256:<hex digest of the key>: <user id>` so the file need not hold the keys themselves).

    Only SHA-256 digests are kept, and a presented key is looked up by its digest: the lookup's timing says
    nothing about the keys. The file is reread when it changes (key rotation without a restart); a change
    that does not parse leaves the previous keys in force and is reported in /flywheel/status."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.error: str | None = None
        self.reloads = 0
        self._signature = self._stat()
        self._users = self._load()  # at start a bad file is an error, not a gateway that refuses everyone

    def user_for(self, key: str) -> str | None:
        self._reload_if_changed()
        return self._users.get(hashlib.sha256(key.encode("latin-1")).digest())

    def __len__(self) -> int:
        return len(self._users)

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.path)
        except OSError as err:
            raise ApiKeysError(f"serving.api_keys_file {self.path}: cannot read it: {err}") from None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _reload_if_changed(self) -> None:
        try:
            signature = self._stat()
            if signature == self._signature:
                return
            self._signature = signature
            self._users = self._load()
            self.error = None
            self.reloads += 1
        except ApiKeysError as err:
            self.error = f"{err}; the keys read before stay in force"

    def _load(self) -> dict[bytes, str]:
        where = f"serving.api_keys_file {self.path}"
        try:
            data = yaml.load(self.path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
        except (OSError, UnicodeDecodeError) as err:
            raise ApiKeysError(f"{where}: cannot read it: {err}") from None
        except yaml.YAMLError as err:  # the problem and its line, not YAML's excerpt of the file (it holds keys)
            mark = getattr(err, "problem_mark", None)
            line = f" (line {mark.line + 1})" if mark is not None else ""
            problem = getattr(err, "problem", None) or type(err).__name__
            raise ApiKeysError(f"{where}: not valid YAML: {problem}{line}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ApiKeysError(f"{where}: expected a mapping of API key -> user id, got {type(data).__name__}")
        users: dict[bytes, str] = {}
        for i, (key, user) in enumerate(data.items(), 1):
            # Errors name the entry by position and user, never echo a key.
            if not isinstance(user, str) or not user.strip():
                raise ApiKeysError(f"{where}: entry {i}: the user id must be a non-empty string, got {user!r}")
            if not isinstance(key, str) or not _API_KEY.match(key):
                raise ApiKeysError(
                    f"{where}: entry {i} (user {user!r}): the key must be a string of printable ASCII, no spaces"
                )
            if key.startswith("sha256:"):
                try:
                    digest = bytes.fromhex(key.removeprefix("sha256:"))
                except ValueError:
                    digest = b""
                if len(digest) != 32:
                    raise ApiKeysError(f"{where}: entry {i} (user {user!r}): 'sha256:' needs 64 hex digits")
            else:
                digest = hashlib.sha256(key.encode()).digest()
            if digest in users:
                raise ApiKeysError(f"{where}: entry {i} (user {user!r}): the same key as user {users[digest]!r}")
            users[digest] = user
        return users


def bearer_token(request: Request) -> str | None:
    """The credentials of an `Authorization: Bearer <token>` header (scheme case-insensitive, RFC 7235);
    None for any other scheme or a bare token."""
    scheme, _, credentials = request.headers.get("authorization", "").strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return None
    return credentials


class Gateway:
    """The gateway's state: the active target, the trace log, the registry to resolve versions on deploy."""

    def __init__(
        self,
        *,
        task: TaskSource,
        trace_log: TraceLog,
        server_factory,  # noqa: ANN001 - (model_dir, enable_lora) -> VllmServer, not started
        resolve,  # noqa: ANN001 - version -> ModelSpec
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
        self.task = task
        self.log = trace_log
        self.server_factory = server_factory
        self.resolve = resolve
        self.token = token
        self.served_name = served_name
        self.workload_id = workload_id
        self.drain_timeout_s = drain_timeout_s
        self.health_max_tokens = health_max_tokens
        self.limits = limits or RequestLimitsConfig()
        self.user_id_from = user_id_from
        self.user_id_header = user_id_header
        self.api_keys = api_keys
        self.stats = GatewayStats()
        self.active: Target | None = None
        self.history: list[dict] = []
        self.on_switch = lambda: None  # called after traffic moved (the server rewrites its state file)
        self._deploy_lock = threading.Lock()
        # Idle connections are dropped before the server's keep-alive timeout (uvicorn's 5 s) can close them
        # under a request; a request that still meets a closed connection is sent again (see _send).
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections, keepalive_expiry=2.0
        )
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0), limits=limits)

    # ---- serving ---------------------------------------------------------------------------------------
    def start(self, version: str) -> None:
        """Bring up the first server for `version` (no health gate: it is what serves already)."""
        target = self._stage(self.resolve(version), current=None)
        self.active = target
        self.history.append({"at": iso_now(), "version": version, "method": "start"})

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
        async def lifespan(app: Starlette):  # noqa: ANN202
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

    def _parse(self, body: bytes) -> dict | Response:
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError as err:
            return _error(400, f"request body is not JSON: {err}")
        if not isinstance(req, dict):
            return _error(400, f"request body must be a JSON object, got {type(req).__name__}")
        return req

    def _caller(self, request: Request) -> tuple[str | None, Response | None]:
        """With user_id_from 'api_key': the user of the request's key, or a 401. Runs before the body is read."""
        if self.user_id_from != "api_key":
            return None, None
        key = bearer_token(request)
        user = self.api_keys.user_for(key) if key else None
        if user is None:
            return None, _error(
                401,
                "missing or unknown API key: send 'Authorization: Bearer <key>' with a key from serving.api_keys_file",
                headers={"www-authenticate": "Bearer"},
            )
        return user, None

    async def _read(self, request: Request, chat: bool) -> tuple[str, Response] | dict:
        """The request's JSON object, read with a bound and held to serving.limits; else (reason, refusal)."""
        limit = int(self.limits.max_request_bytes)
        too_large = (
            "refused_max_request_bytes",
            _error(413, f"request body is larger than {limit} bytes (serving.limits.max_request_bytes)"),
        )
        declared = request.headers.get("content-length")
        if declared is not None:
            declared = declared.strip()
            if not (declared.isascii() and declared.isdigit()):
                return "bad_request", _error(400, f"Content-Length must be a number of bytes, got {declared!r}")
            if int(declared) > limit:
                return too_large  # refused before a byte of the body is read
        chunks, size = [], 0
        async for chunk in request.stream():  # counted as it comes: a chunked body declares no length
            size += len(chunk)
            if size > limit:
                return too_large
            chunks.append(chunk)
        req = self._parse(b"".join(chunks))
        if isinstance(req, Response):
            return "bad_request", req
        refused = self._over_limits(req, chat)
        return refused or req

    def _over_limits(self, req: dict, chat: bool) -> tuple[str, Response] | None:
        lim = self.limits
        if chat:
            allowed = set(lim.allowed_fields) | {"user"}  # `user` is the gateway's own (serving.user_id_from)
            extra = sorted(k for k in req if k not in allowed)
            if extra:
                return "refused_allowed_fields", _error(
                    400,
                    f"request field(s) {', '.join(map(repr, extra))} not accepted by this gateway; accepted: "
                    f"{', '.join(lim.allowed_fields)} (serving.limits.allowed_fields)",
                )
        bounds = [("max_tokens", "max_tokens"), ("max_completion_tokens", "max_tokens"), ("n", "max_n")]
        if chat:
            bounds.append(("top_logprobs", "max_top_logprobs"))
        else:  # /v1/completions: `logprobs` is a count there, `best_of` a number of sequences
            bounds += [("best_of", "max_n"), ("logprobs", "max_top_logprobs")]
        for name, setting in bounds:
            value = req.get(name)
            if value is None:
                continue
            limit = getattr(lim, setting)
            if not isinstance(value, int) or isinstance(value, bool):
                return f"refused_{setting}", _error(
                    400, f"'{name}' must be an integer (at most {limit}, serving.limits.{setting}), got {value!r}"
                )
            if value > limit:
                return f"refused_{setting}", _error(
                    400, f"'{name}' is {value}, more than this gateway allows: {limit} (serving.limits.{setting})"
                )
        return None  # a request that names no max_tokens: the server's own cap (serve.py) is the same limit

    async def forward(self, request: Request) -> Response:
        _, refusal = self._caller(request)
        if refusal is not None:
            self.stats.forward_refused["unauthorized"] += 1
            return refusal
        req = None
        if request.method == "POST":
            req = await self._read(request, chat=False)
            if isinstance(req, tuple):
                self.stats.forward_refused[req[0]] += 1
                return req[1]
        target = self.active
        if target is None:
            return _error(503, "no model is being served yet")
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
        user, refusal = self._caller(request)
        if refusal is not None:
            self.stats.not_captured["unauthorized"] += 1
            return refusal
        req = await self._read(request, chat=True)
        if isinstance(req, tuple):
            self.stats.not_captured[req[0]] += 1
            return req[1]
        target = self.active
        if target is None:
            self.stats.not_captured["no_model"] += 1
            return _error(503, "no model is being served yet")
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
            return _error(502, f"upstream model server unreachable: {type(err).__name__}")
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
                return _error(503, f"the gateway could not record this completion ({err}); retry later")
            return Response(r.content, status_code=200, media_type="application/json", headers=headers)
        if r.status_code != 200:
            body = await r.aread()
            await r.aclose()
            target.inflight -= 1
            self.stats.not_captured[f"upstream_http_{r.status_code}"] += 1
            return Response(body, status_code=r.status_code, media_type="application/json", headers=headers)

        async def relay():  # noqa: ANN202
            acc = _Stream()
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

    def _capture(self, received: str, req: dict, resp: dict, user, workload: str, meta: dict) -> None:  # noqa: ANN001
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
            return _error(401, "missing or wrong bearer token (see the gateway's state file)")
        return JSONResponse(self.status_payload())

    async def deploy_endpoint(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "missing or wrong bearer token (see the gateway's state file)")
        spec = self._parse(await request.body())
        if isinstance(spec, Response):
            return spec
        if not isinstance(spec.get("version"), str):
            return _error(400, "'version' (a registered model version, as a string) is required")
        health = spec.get("health") or {}
        prompts = health.get("prompts") or []
        if not isinstance(prompts, list) or not all(
            isinstance(p, dict) and {"question", "reference"} <= p.keys() for p in prompts
        ):
            return _error(400, "'health.prompts' must be a list of {question, reference} objects")
        min_correct = health.get("min_correct", math.ceil(0.75 * len(prompts)))
        result = await asyncio.to_thread(self.deploy, spec["version"], prompts, int(min_correct))
        return JSONResponse(result, status_code=200 if result["ok"] else 409)

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

    def _stage(self, spec, current: Target | None) -> Target:  # noqa: ANN001 - ModelSpec
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

    def shutdown(self) -> None:
        if self.active is not None:
            self.active.server.stop()
        self.log.close()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "flywheel_gateway_error", "code": status}},
        status_code=status,
        headers=headers,
    )


@dataclass(frozen=True)
class ModelSpec:
    version: str
    model_dir: str  # full weights (for an adapter: merged, used when no server of its base runs)
    adapter_dir: str | None = None
    base_dir: str | None = None


def state_path(home: Path) -> Path:
    return home / "serving" / "gateway.json"
