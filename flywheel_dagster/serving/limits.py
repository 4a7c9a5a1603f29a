"""What a client request may be, checked before it reaches the model server: a JSON object read with a bound
(serving.limits.max_request_bytes), asking for no more than serving.limits allows (max_tokens, n, logprobs;
the chat fields accepted). A refusal names the setting that set the limit, and the reason it is counted under.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from flywheel_dagster.config import RequestLimitsConfig


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The gateway's own error, in OpenAI's error shape."""
    return JSONResponse(
        {"error": {"message": message, "type": "flywheel_gateway_error", "code": status}},
        status_code=status,
        headers=headers,
    )


def parse_object(body: bytes) -> dict | Response:
    """The body as a JSON object, or a 400."""
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        return error_response(400, f"request body is not JSON: {err}")
    if not isinstance(req, dict):
        return error_response(400, f"request body must be a JSON object, got {type(req).__name__}")
    return req


async def read_request(request: Request, limits: RequestLimitsConfig, chat: bool) -> tuple[str, Response] | dict:
    """The request's JSON object, read with a bound and held to serving.limits; else (reason, refusal)."""
    limit = int(limits.max_request_bytes)
    too_large = (
        "refused_max_request_bytes",
        error_response(413, f"request body is larger than {limit} bytes (serving.limits.max_request_bytes)"),
    )
    declared = request.headers.get("content-length")
    if declared is not None:
        declared = declared.strip()
        if not (declared.isascii() and declared.isdigit()):
            return "bad_request", error_response(400, f"Content-Length must be a number of bytes, got {declared!r}")
        if int(declared) > limit:
            return too_large  # refused before a byte of the body is read
    chunks, size = [], 0
    async for chunk in request.stream():  # counted as it comes: a chunked body declares no length
        size += len(chunk)
        if size > limit:
            return too_large
        chunks.append(chunk)
    req = parse_object(b"".join(chunks))
    if isinstance(req, Response):
        return "bad_request", req
    refused = over_limits(req, limits, chat)
    return refused or req


def over_limits(req: dict, lim: RequestLimitsConfig, chat: bool) -> tuple[str, Response] | None:
    """(reason, refusal) for the first field of `req` that serving.limits does not allow; None if all pass."""
    if chat:
        allowed = set(lim.allowed_fields) | {"user"}  # `user` is the gateway's own (serving.user_id_from)
        extra = sorted(k for k in req if k not in allowed)
        if extra:
            return "refused_allowed_fields", error_response(
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
            return f"refused_{setting}", error_response(
                400, f"'{name}' must be an integer (at most {limit}, serving.limits.{setting}), got {value!r}"
            )
        if value > limit:
            return f"refused_{setting}", error_response(
                400, f"'{name}' is {value}, more than this gateway allows: {limit} (serving.limits.{setting})"
            )
    return None  # a request that names no max_tokens: the server's own cap (serve.py) is the same limit
