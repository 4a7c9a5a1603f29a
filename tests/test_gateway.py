"""The gateway's front door, without a model server: who a trace is attributed to (serving.user_id_from), the
request limits (serving.limits), the operator token's Bearer scheme, and a full disk. The model server is a
stub OpenAI app on an in-process transport that records what reached it; everything before the upstream
call is the real gateway, driven through its Starlette app."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from flywheel_dagster.config import RequestLimitsConfig, build_config
from flywheel_dagster.serving.api_keys import ApiKeys, ApiKeysError
from flywheel_dagster.serving.capture import TraceLog
from flywheel_dagster.serving.gateway import Gateway
from flywheel_dagster.serving.switchover import Target
from flywheel_dagster.serving.upstream import VllmServer
from flywheel_dagster.tasks import load_task

TESTS = Path(__file__).resolve().parent
CHAT = "/v1/chat/completions"
OPERATOR = "operator-token"


def stub_upstream(seen: list[dict]) -> Starlette:
    """An OpenAI-compatible server that answers "19" and keeps each request it got (headers, body)."""

    async def chat(request: Request) -> Response:
        body = await request.json()
        seen.append({"headers": dict(request.headers), "body": body})
        head = {"id": f"chatcmpl-{len(seen)}", "created": 0, "model": body["model"]}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "19"}
            return JSONResponse(
                {
                    **head,
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                }
            )
        chunks = [
            {**head, "choices": [{"index": 0, "delta": {"content": "1"}, "finish_reason": None}]},
            {**head, "choices": [{"index": 0, "delta": {"content": "9"}, "finish_reason": "stop"}]},
        ]
        events = [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]
        return StreamingResponse(iter(events), media_type="text/event-stream")

    async def completions(request: Request) -> Response:
        seen.append({"headers": dict(request.headers), "body": await request.json()})
        return JSONResponse({"id": "cmpl-1", "choices": [{"index": 0, "text": "19", "finish_reason": "stop"}]})

    async def models(request: Request) -> Response:
        seen.append({"headers": dict(request.headers), "body": None})
        return JSONResponse({"object": "list", "data": [{"id": "flywheel"}]})

    return Starlette(
        routes=[
            Route(CHAT, chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )


def make_gateway(logs: Path, seen: list[dict], **kw) -> Gateway:  # noqa: ANN003
    """A gateway serving version 1 of a model whose server is the stub."""
    gw = Gateway(
        task=load_task(build_config({"preset": "playground"})),
        trace_log=TraceLog(logs, gateway_id="gw"),
        server_factory=None,
        resolve=None,
        token=OPERATOR,
        served_name="flywheel",
        **kw,
    )
    server = VllmServer(model_dir="unused", served_name="flywheel", port=9, chat_template="", log_path=logs / "x")
    gw.active = Target(server, "flywheel", "1")
    gw.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=stub_upstream(seen)))
    return gw


def ask(**kw) -> dict:  # noqa: ANN003
    return {"model": "any", "messages": [{"role": "user", "content": "12+7"}], **kw}


def records(gw: Gateway) -> list[dict]:
    gw.log.flush()
    return [json.loads(x) for f in gw.log.stats.files for x in Path(f).read_text().splitlines()]


# ---- attribution ------------------------------------------------------------------------------------------
def test_the_ingress_header_names_the_user_and_the_body_cannot_override_it(tmp_path):  # noqa: ANN001
    """By default the user is the header the ingress sets; a client's `user` field is neither who the trace is
    attributed to, nor forwarded, nor kept in the recorded request."""
    seen: list[dict] = []
    gw = make_gateway(tmp_path, seen)
    assert gw.user_id_from == "header"  # the gateway's default, as the config's
    assert build_config({"preset": "playground"}).serving.user_id_from == "header"
    with TestClient(gw.app()) as client:
        r = client.post(CHAT, json=ask(user="bob"), headers={"x-flywheel-user-id": "alice"})
        assert r.status_code == 200, r.text
        streamed = client.post(CHAT, json=ask(user="bob", stream=True), headers={"x-flywheel-user-id": "alice"})
        assert streamed.status_code == 200
        anonymous = client.post(CHAT, json=ask(user="bob"))  # no ingress header: no user, not the body's
        assert anonymous.status_code == 200
    got = records(gw)
    assert [r["user_id"] for r in got] == ["alice", "alice", None]
    assert all("user" not in r["request"] for r in got)
    assert all("user" not in s["body"] for s in seen)
    assert gw.stats.body_user_ignored == 3 and gw.status_payload()["body_user_ignored"] == 3


def test_the_user_header_is_a_deployment_setting(tmp_path):  # noqa: ANN001
    seen: list[dict] = []
    gw = make_gateway(tmp_path, seen, user_id_header="X-Auth-Request-User")
    with TestClient(gw.app()) as client:
        r = client.post(CHAT, json=ask(), headers={"x-auth-request-user": "alice", "x-flywheel-user-id": "mallory"})
        assert r.status_code == 200
    assert [r["user_id"] for r in records(gw)] == ["alice"]
    with pytest.raises(ValueError, match="user_id_header"):
        build_config({"preset": "playground", "serving": {"user_id_header": "X User: id"}})


def test_the_body_names_the_user_only_when_chosen(tmp_path):  # noqa: ANN001
    seen: list[dict] = []
    gw = make_gateway(tmp_path, seen, user_id_from="body")
    with TestClient(gw.app()) as client:
        r = client.post(CHAT, json=ask(user="bob"), headers={"x-flywheel-user-id": "alice"})
        assert r.status_code == 200
    got = records(gw)
    assert [r["user_id"] for r in got] == ["bob"] and "user" not in got[0]["request"]
    assert gw.stats.body_user_ignored == 0


def write_keys(path: Path, entries: dict[str, str]) -> Path:
    path.write_text("".join(f"{json.dumps(k)}: {json.dumps(v)}\n" for k, v in entries.items()))
    return path


def test_api_keys_name_the_user_and_a_request_without_one_gets_401(tmp_path):  # noqa: ANN001
    """user_id_from 'api_key': the client's key (Authorization: Bearer) is looked up by its SHA-256 in
    serving.api_keys_file, which may hold the keys or only their digests; a request without a known key is
    refused before its body is read and never reaches the model."""
    digest = "sha256:" + hashlib.sha256(b"key-of-bob").hexdigest()
    keys = write_keys(tmp_path / "keys.yaml", {"key-of-alice": "alice", digest: "bob"})
    seen: list[dict] = []
    gw = make_gateway(tmp_path / "logs", seen, user_id_from="api_key", api_keys=ApiKeys(keys))
    with TestClient(gw.app()) as client:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "key-of-alice"}):
            r = client.post(CHAT, json=ask(user="alice"), headers={**headers, "x-flywheel-user-id": "alice"})
            assert r.status_code == 401 and "serving.api_keys_file" in r.json()["error"]["message"]
            assert r.headers["www-authenticate"] == "Bearer"
        assert client.get("/v1/models").status_code == 401  # the forwarded endpoints too
        assert client.post("/v1/completions", json={"model": "m", "prompt": "Q:1+2"}).status_code == 401
        assert seen == []
        for key in ("key-of-alice", "key-of-bob"):
            r = client.post(CHAT, json=ask(user="mallory"), headers={"authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
        assert client.get("/v1/models", headers={"authorization": "Bearer key-of-bob"}).status_code == 200
        status = client.get("/flywheel/status", headers={"authorization": f"Bearer {OPERATOR}"}).json()
    assert [r["user_id"] for r in records(gw)] == ["alice", "bob"]
    assert all("user" not in s["body"] for s in seen if s["body"])
    # the client's key goes no further than the gateway: the model server gets its own
    assert all(s["headers"]["authorization"] == gw.active.server.headers["authorization"] for s in seen)
    assert gw.stats.not_captured["unauthorized"] == 3 and gw.stats.forward_refused["unauthorized"] == 2
    assert status["user_id_from"] == "api_key" and status["api_keys"]["keys"] == 2


def test_api_keys_rotate_without_a_restart(tmp_path):  # noqa: ANN001
    keys = write_keys(tmp_path / "keys.yaml", {"old-key": "alice"})
    seen: list[dict] = []
    gw = make_gateway(tmp_path / "logs", seen, user_id_from="api_key", api_keys=ApiKeys(keys))
    with TestClient(gw.app()) as client:

        def status_of(key: str) -> int:
            return client.post(CHAT, json=ask(), headers={"authorization": f"Bearer {key}"}).status_code

        assert (status_of("old-key"), status_of("new-key")) == (200, 401)
        write_keys(keys, {"new-key-of-alice": "alice"})
        assert (status_of("old-key"), status_of("new-key-of-alice")) == (401, 200)
        keys.write_text("new-key-of-alice: [not, a, user]\n")  # a broken edit keeps the keys in force
        assert status_of("new-key-of-alice") == 200
        assert "entry 1" in gw.api_keys.error and "stay in force" in gw.api_keys.error
    assert [r["user_id"] for r in records(gw)] == ["alice", "alice", "alice"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[a, b]", "expected a mapping"),
        ("secret-key-1: alice\nsecret-key-1: bob\n", "the same key"),
        ("'key with spaces': alice\n", "entry 1 (user 'alice')"),
        ("'sha256:abc': alice\n", "64 hex digits"),
        ("secret-key-1: [alice\n", "not valid YAML"),
        ("secret-key-1: ''\n", "non-empty string"),
    ],
)
def test_a_bad_api_keys_file_stops_the_start_and_never_echoes_a_key(tmp_path, content, expected):  # noqa: ANN001
    path = tmp_path / "keys.yaml"
    path.write_text(content)
    with pytest.raises(ApiKeysError, match="serving.api_keys_file") as err:
        ApiKeys(path)
    assert expected in str(err.value) and "secret-key-1" not in str(err.value)
    with pytest.raises(ApiKeysError, match="cannot read"):
        ApiKeys(tmp_path / "missing.yaml")


def test_api_key_attribution_needs_its_keys_file():
    with pytest.raises(ValueError, match="needs serving.api_keys_file"):
        build_config({"preset": "playground", "serving": {"user_id_from": "api_key"}})
    with pytest.raises(ValueError, match="set user_id_from: api_key"):
        build_config({"preset": "playground", "serving": {"api_keys_file": "/etc/flywheel/keys.yaml"}})


# ---- limits -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "setting", "reason"),
    [
        (ask(chat_template="{{ 7 * 7 }}"), "serving.limits.allowed_fields", "refused_allowed_fields"),
        (ask(chat_template_kwargs={"x": 1}), "serving.limits.allowed_fields", "refused_allowed_fields"),
        (ask(guided_regex=".*"), "serving.limits.allowed_fields", "refused_allowed_fields"),
        (ask(n=64), "serving.limits.max_n", "refused_max_n"),
        (ask(max_tokens=1_000_000), "serving.limits.max_tokens", "refused_max_tokens"),
        (ask(max_completion_tokens=1_000_000), "serving.limits.max_tokens", "refused_max_tokens"),
        (ask(max_tokens="1000000"), "serving.limits.max_tokens", "refused_max_tokens"),
        (ask(logprobs=True, top_logprobs=20), "serving.limits.max_top_logprobs", "refused_max_top_logprobs"),
    ],
)
def test_a_request_beyond_the_limits_is_refused_and_counted(tmp_path, body, setting, reason):  # noqa: ANN001
    seen: list[dict] = []
    gw = make_gateway(tmp_path, seen)
    with TestClient(gw.app()) as client:
        r = client.post(CHAT, json=body)
    assert r.status_code == 400 and setting in r.json()["error"]["message"], r.text
    assert seen == [] and gw.stats.not_captured == {reason: 1} and gw.stats.captured == 0


def test_a_request_within_the_limits_goes_through_as_sent(tmp_path):  # noqa: ANN001
    seen: list[dict] = []
    gw = make_gateway(tmp_path, seen)
    body = ask(n=4, max_tokens=4096, logprobs=True, top_logprobs=5, temperature=0.7, seed=3, stop=["\n"])
    with TestClient(gw.app()) as client:
        assert client.post(CHAT, json=body).status_code == 200
    assert seen[0]["body"] == {**body, "model": "flywheel"}
    assert gw.stats.not_captured == {} and gw.stats.captured == 1


def test_the_limits_are_settings(tmp_path):  # noqa: ANN001
    limits = RequestLimitsConfig(max_n=1, allowed_fields=["model", "messages", "n", "response_format"])
    seen: list[dict] = []
    gw = make_gateway(tmp_path, seen, limits=limits)
    with TestClient(gw.app()) as client:
        assert client.post(CHAT, json=ask(response_format={"type": "json_object"})).status_code == 200
        assert client.post(CHAT, json=ask(n=2)).status_code == 400
        refused = client.post(CHAT, json=ask(temperature=0.5))
    assert refused.status_code == 400 and "'temperature'" in refused.json()["error"]["message"]
    with pytest.raises(ValueError, match="must include 'messages'"):
        RequestLimitsConfig(allowed_fields=["model"])
    cfg = build_config({"preset": "playground", "serving": {"limits": {"max_request_bytes": "2MiB"}}})
    assert cfg.serving.limits.max_request_bytes == 2 * 1024 * 1024


def test_completions_are_held_to_the_same_bounds(tmp_path):  # noqa: ANN001
    seen: list[dict] = []
    gw = make_gateway(tmp_path, seen)
    with TestClient(gw.app()) as client:
        for extra, setting in (
            ({"n": 64}, "max_n"),
            ({"best_of": 64}, "max_n"),
            ({"logprobs": 20}, "max_top_logprobs"),
        ):
            r = client.post("/v1/completions", json={"model": "m", "prompt": "Q:1+2", **extra})
            assert r.status_code == 400 and f"serving.limits.{setting}" in r.json()["error"]["message"]
        too_big = client.post("/v1/completions", json={"model": "m", "prompt": "x" * (2 * 1024 * 1024)})
        assert too_big.status_code == 413
        assert client.post("/v1/completions", json={"model": "m", "prompt": "Q:1+2"}).status_code == 200
    assert len(seen) == 1
    assert gw.stats.forward_refused == {
        "refused_max_n": 2,
        "refused_max_top_logprobs": 1,
        "refused_max_request_bytes": 1,
    }


def test_a_50_mb_body_is_refused_before_it_is_read(tmp_path):  # noqa: ANN001
    """413 on a declared Content-Length without reading the body; a chunked body is counted as it arrives and
    refused once past the limit (1 MiB by default), not buffered whole."""
    seen: list[dict] = []
    gw = make_gateway(tmp_path, seen)
    chunk, total = 64 * 1024, 50 * 1024 * 1024

    async def send(declared: bool) -> tuple[httpx.Response, int]:
        pulled = 0

        async def body():  # noqa: ANN202
            nonlocal pulled
            for _ in range(total // chunk):
                pulled += chunk
                yield b" " * chunk

        headers = {"content-type": "application/json"} | ({"content-length": str(total)} if declared else {})
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app()), base_url="http://gw") as client:
            r = await client.post(CHAT, content=body(), headers=headers)
        return r, pulled

    declared, pulled_declared = asyncio.run(send(declared=True))
    chunked, pulled_chunked = asyncio.run(send(declared=False))
    for r in (declared, chunked):
        assert r.status_code == 413
        assert "1048576 bytes (serving.limits.max_request_bytes)" in r.json()["error"]["message"]
    assert pulled_declared == 0
    assert pulled_chunked <= 1024 * 1024 + chunk
    assert seen == [] and gw.stats.not_captured == {"refused_max_request_bytes": 2}
    assert not any(tmp_path.rglob("*.jsonl"))


# ---- operator token ---------------------------------------------------------------------------------------
def test_the_operator_endpoints_need_the_bearer_scheme(tmp_path):  # noqa: ANN001
    gw = make_gateway(tmp_path, [])
    with TestClient(gw.app()) as client:

        def status(authorization: str | bytes | None) -> int:
            headers = {"authorization": authorization} if authorization is not None else {}
            return client.get("/flywheel/status", headers=headers).status_code

        assert status(OPERATOR) == 401  # a bare token is not the Bearer scheme
        assert status(f"Basic {OPERATOR}") == 401
        assert status(f"Bearer{OPERATOR}") == 401
        assert status("Bearer ") == 401 and status(None) == 401
        assert status(f"Bearer {OPERATOR}x") == 401
        assert status("Bearer tökén".encode()) == 401  # not ASCII: refused, not a server error
        assert status(f"Bearer {OPERATOR}") == 200
        assert status(f"bearer {OPERATOR}") == 200  # the scheme is case-insensitive (RFC 7235)
        assert (
            client.post("/flywheel/deploy", json={"version": "2"}, headers={"authorization": OPERATOR}).status_code
            == 401
        )


# ---- a full disk ------------------------------------------------------------------------------------------
def test_a_failed_write_gets_503_and_the_next_trace_is_whole(tmp_path):  # noqa: ANN001
    """The log file hits its size limit (RLIMIT_FSIZE, a real short write then EFBIG, as on a full disk): that
    request is answered 503, and once there is room the next answered request's trace is a whole line."""
    script = textwrap.dedent(
        f"""
        import json, resource, signal, sys
        sys.path.insert(0, {str(TESTS)!r})
        from pathlib import Path
        from starlette.testclient import TestClient
        from test_gateway import ask, make_gateway

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        gw = make_gateway(Path({str(tmp_path)!r}), [])
        codes = []
        with TestClient(gw.app()) as client:
            post = lambda: client.post("/v1/chat/completions", json=ask(), headers={{"x-flywheel-user-id": "u"}})
            codes.append(post().status_code)
            whole = Path(gw.log.stats.files[0]).stat().st_size
            _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (whole + 100, hard))
            failed = post()
            codes.append(failed.status_code)
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
            codes.append(post().status_code)
        gw.log.close()
        print(json.dumps({{"codes": codes, "message": failed.json()["error"]["message"],
                          "not_captured": dict(gw.stats.not_captured), "file": gw.log.stats.files[0]}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=TESTS.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["codes"] == [200, 503, 200] and "could not record" in out["message"]
    assert out["not_captured"] == {"capture_failed": 1}
    lines = Path(out["file"]).read_bytes().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == ["chatcmpl-1", "chatcmpl-3"]
    assert os.stat(out["file"]).st_size == sum(len(line) + 1 for line in lines)
