"""OpenAI chat-completions log records into trace rows, or a RecordError with a quarantine reason code."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from flywheel_dagster.curation.batching import Memo
from flywheel_dagster.curation.ingest.files import Window
from flywheel_dagster.tasks.base import Problem, TaskSource
from flywheel_dagster.traces.schema import CONTEXT_PII, TRACE_SCHEMA, context_pii_value

_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.DOTALL)
INT32_MAX = 2**31 - 1
# Unix seconds of 0001-01-01 and 10000-01-01 UTC: what a datetime (and so the trace's created_at) can hold.
_EPOCH_MIN, _EPOCH_END = -62_135_596_800, 253_402_300_800
# Keys the ingest reads: an ambiguous record's detail names these, any other key only by its length.
_KNOWN_KEYS = frozenset(
    "timestamp request_id workload_id user_id request response metadata messages role content type text "
    "choices index message reasoning_content reasoning finish_reason usage prompt_tokens completion_tokens "
    "total_tokens model created id object reference_answer model_version".split()
)
_USAGE_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")


class RecordError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _count(value: object, where: str) -> int:
    """A count or an index: a non-negative integer that fits the trace schema's int32 columns."""
    if type(value) is int and 0 <= value <= INT32_MAX:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError("wrong_type", f"'{where}' must be a non-negative integer, got {type(value).__name__}")
    if isinstance(value, float):
        if not value.is_integer():  # also nan and inf
            raise RecordError("wrong_type", f"'{where}' must be an integer, got a non-integral float")
        value = int(value)
    if value < 0:
        raise RecordError("out_of_range", f"'{where}' is negative")
    if value > INT32_MAX:
        raise RecordError("out_of_range", f"'{where}' is above {INT32_MAX} (an int32), {len(str(value))} digits")
    return value


def _timestamp(record: dict) -> datetime:
    ts = record.get("timestamp")
    if ts is None:
        created = (record.get("response") or {}).get("created") if isinstance(record.get("response"), dict) else None
        if created is None:
            raise RecordError("missing_field", "no 'timestamp' and no 'response.created'")
        if not isinstance(created, int | float) or isinstance(created, bool):
            raise RecordError("wrong_type", f"'response.created' must be Unix seconds, got {type(created).__name__}")
        if not (math.isfinite(created) and _EPOCH_MIN <= created < _EPOCH_END):
            raise RecordError("out_of_range", "'response.created' is not a Unix time in years 1-9999")
        try:
            return datetime.fromtimestamp(created, UTC)
        except (OverflowError, OSError, ValueError):  # the platform's time_t, or rounding up to year 10000
            raise RecordError("out_of_range", "'response.created' is not a Unix time in years 1-9999") from None
    if not isinstance(ts, str):
        raise RecordError("wrong_type", f"'timestamp' must be an ISO 8601 string, got {type(ts).__name__}")
    try:
        parsed = datetime.fromisoformat(ts)
    except ValueError:
        raise RecordError("bad_timestamp", f"'timestamp' ({len(ts)} chars) is not ISO 8601") from None
    if parsed.tzinfo is None:
        raise RecordError("bad_timestamp", "'timestamp' has no time zone (expected e.g. ...Z)")
    if parsed.tzinfo is UTC:  # "...Z", what gateways write: already what astimezone would return
        return parsed
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):  # 9999-12-31T23:00-05:00 is in year 10000 in UTC
        raise RecordError("out_of_range", "'timestamp' is outside years 1-9999 in UTC") from None


def _text(content: object, where: str) -> str:
    """Message content: a string, or a list of parts of which the text parts are joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict):
                raise RecordError("wrong_type", f"'{where}' parts must be objects, got {type(part).__name__}")
            if part.get("type") == "text":
                if not isinstance(part.get("text"), str):
                    raise RecordError("wrong_type", f"'{where}' text part has no string 'text'")
                parts.append(part["text"])
        return "".join(parts)
    if content is None:
        raise RecordError("missing_field", f"'{where}' is missing")
    raise RecordError("wrong_type", f"'{where}' must be a string or a list of parts, got {type(content).__name__}")


def _get(obj: dict, key: str, kind: type | tuple, where: str) -> object:
    if key not in obj or obj[key] is None:
        raise RecordError("missing_field", f"'{where}' is missing")
    value = obj[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise RecordError("wrong_type", f"'{where}' must be {names}, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class Settings:
    cycle: str
    window: Window
    max_record_bytes: int = 1_000_000
    reasoning_markup: str = "plain"  # "plain": reasoning, newline, answer; "think": <think>reasoning</think>answer


def _completion(reasoning: str | None, content: str, markup: str) -> tuple[str, str | None]:
    """The generated text as trained on, and the reasoning when the server split it off."""
    if reasoning is None and "<think>" in content:
        # _THINK.match(content) without its lazy scan (3 us on a GSM8K-sized text): str.isspace is the regex's \s
        head = content.lstrip()
        if head.startswith("<think>") and (end := head.find("</think>", 7)) >= 0:
            reasoning, content = head[7:end], head[end + 8 :].lstrip()
    if reasoning is None:
        return content, None
    reasoning = reasoning.strip()
    if markup == "think":
        return f"<think>{reasoning}</think>{content}", reasoning
    return f"{reasoning}\n{content.lstrip()}", reasoning


def chat_record_traces(
    record: object,
    task: TaskSource,
    settings: Settings,
    line_key: str,
    lookup: Callable[[str], Problem | None] | None = None,
) -> list[dict]:
    """Trace rows from one chat-completions log record; raises RecordError with a reason code.

    `lookup` (question -> Problem | None) defaults to task.lookup; Ingestor passes a cached one."""
    rows = chat_record_rows(record, task, settings, line_key, lookup)
    with_context_pii(rows)
    return [dict(zip(TRACE_COLUMNS, row, strict=True)) for row in rows]


TRACE_COLUMNS = tuple(TRACE_SCHEMA.names)


def chat_record_rows(
    record: object,
    task: TaskSource,
    settings: Settings,
    line_key: str,
    lookup: Callable[[str], Problem | None] | None = None,
) -> list[tuple]:
    """chat_record_traces' rows as tuples in TRACE_SCHEMA's column order (what the Ingestor collects: a tuple
    costs a fraction of a dict, and the columns come out of zip(*rows)), but for context_pii, which holds the
    text of the request's other turns until with_context_pii replaces it by the PII found there.

    The checks run in a fixed order, the first failing one names the reason. Each check tests the exact type
    orjson produces first and falls back to the general check (which raises, or accepts a subclass)."""
    lookup = lookup or task.lookup
    if type(record) is not dict:
        if not isinstance(record, dict):
            raise RecordError("not_an_object", f"expected a JSON object, got {type(record).__name__}")
    ts = _timestamp(record)
    window = settings.window
    if not (window.start <= ts < window.end):
        raise RecordError("outside_window", f"{ts.isoformat()} is outside [{window.start}, {window.end})")
    request = record.get("request")
    if type(request) is not dict:
        request = _get(record, "request", dict, "request")
    response = record.get("response")
    if type(response) is not dict:
        response = _get(record, "response", dict, "response")
    messages = request.get("messages")
    if type(messages) is not list:
        messages = _get(request, "messages", list, "request.messages")
    question, asked = None, -1
    for i, msg in enumerate(messages):
        if type(msg) is not dict and not isinstance(msg, dict):
            raise RecordError("wrong_type", f"'request.messages[{i}]' must be an object")
        if msg.get("role") == "user":
            content = msg.get("content")
            question = content if type(content) is str else _text(content, f"request.messages[{i}].content")
            asked = i
    if question is None:
        raise RecordError("no_user_message", "request.messages has no user turn")
    # One turn, a role and a text: the question and nothing else (most requests; half a microsecond saved)
    # (msg and content: the last turn's, here the only one, the user's)
    context = None if len(messages) == 1 and len(msg) == 2 and type(content) is str else _context(messages, asked)
    choices = response.get("choices")
    if type(choices) is not list:
        choices = _get(response, "choices", list, "response.choices")
    if not choices:
        raise RecordError("missing_field", "'response.choices' is empty")
    user_id = record.get("user_id")
    workload = record.get("workload_id")
    request_id = record.get("request_id")
    if not (
        (user_id is None or type(user_id) is str)
        and (workload is None or type(workload) is str)
        and (request_id is None or type(request_id) is str)
    ):
        for key, value in (("user_id", user_id), ("workload_id", workload), ("request_id", request_id)):
            if value is not None and not isinstance(value, str):
                raise RecordError("wrong_type", f"'{key}' must be a string, got {type(value).__name__}")
    metadata = record.get("metadata") or {}
    if type(metadata) is not dict and not isinstance(metadata, dict):
        raise RecordError("wrong_type", f"'metadata' must be an object, got {type(metadata).__name__}")
    reference = metadata.get("reference_answer")
    if reference is not None and not isinstance(reference, str | int | float):
        raise RecordError("wrong_type", "'metadata.reference_answer' must be a string or a number")
    model = response.get("model") or request.get("model") or "unknown"
    if type(model) is not str and not isinstance(model, str):
        raise RecordError("wrong_type", f"'model' (response or request) must be a string, got {type(model).__name__}")
    version = metadata.get("model_version") or "unknown"
    if type(version) is not str and (isinstance(version, bool) or not isinstance(version, (str, int, float))):
        raise RecordError("wrong_type", "'metadata.model_version' must be a string or a number")
    usage = response.get("usage")
    if usage is None:
        usage = {}
    elif type(usage) is not dict and not isinstance(usage, dict):
        raise RecordError("wrong_type", f"'response.usage' must be an object, got {type(usage).__name__}")
    tokens = None
    if usage:
        for key in _USAGE_COUNTS:
            if (count := usage.get(key)) is not None:
                if not (type(count) is int and 0 <= count <= INT32_MAX):
                    count = _count(count, f"response.usage.{key}")
                if key == "completion_tokens" and len(choices) == 1:
                    tokens = count
    problem = lookup(question)
    if reference is None and problem is not None:
        reference = problem.reference
    prompt = problem.prompt if problem is not None else task.prompt_for(question)
    problem_id, suite = (problem.problem_id, problem.suite) if problem is not None else (None, None)
    request_id = request_id or line_key
    reference = None if reference is None else str(reference)
    version = version if type(version) is str else str(version)
    cycle, markup, parse = settings.cycle, settings.reasoning_markup, task.parse
    rows = []
    for j, choice in enumerate(choices):
        if type(choice) is not dict and not isinstance(choice, dict):
            raise RecordError("wrong_type", f"'response.choices[{j}]' must be an object")
        index = choice.get("index")
        if index is None:
            index = j
        elif not (type(index) is int and 0 <= index <= INT32_MAX):
            index = _count(index, f"response.choices[{j}].index")
        message = choice.get("message")
        if type(message) is not dict:
            message = _get(choice, "message", dict, f"response.choices[{j}].message")
        content = message.get("content")
        if content is None:
            content = ""
        elif type(content) is not str:
            content = _text(content, f"response.choices[{j}].message.content")
        reasoning = message.get("reasoning_content", message.get("reasoning"))
        if reasoning is not None and type(reasoning) is not str and not isinstance(reasoning, str):
            raise RecordError("wrong_type", f"'response.choices[{j}].message.reasoning_content' must be a string")
        completion, split_reasoning = _completion(reasoning, content, markup)
        if not completion.strip():
            raise RecordError("empty_completion", f"'response.choices[{j}]' has no content and no reasoning")
        parsed = parse(completion)
        finish = choice.get("finish_reason")
        rows.append(
            (
                hashlib.sha256(f"{cycle}\x1f{request_id}\x1f{j}".encode()).hexdigest()[:24],
                cycle,
                "production",
                model,
                version,
                problem_id,
                suite,
                prompt,
                completion,
                split_reasoning if split_reasoning is not None else parsed.reasoning,
                parsed.answer,
                reference,
                None,
                None,
                None,
                tokens if tokens is not None else len(completion.split()),
                None,
                finish if type(finish) is str or isinstance(finish, str) else None,
                index,
                ts,
                workload,
                user_id,
                request_id,
                context,
            )
        )
    return rows


# A turn's fields whose text _context reads (an earlier answer's reasoning, a refusal), beside its content parts,
# its name and its tool calls.
_CONTEXT_FIELDS = ("content", "reasoning_content", "reasoning", "refusal")


def _context(messages: list[dict], asked: int) -> str | None:
    """The text of the request's turns but the one asked (`asked`: its place, whose name and content parts other
    than text parts count too, since the question leaves them out), joined, or None when they hold none: what
    the ingest searches for PII values that the trace may repeat (with_context_pii). A tool call's arguments
    and a tool's result (a "tool" or "function" turn's content) written as JSON become "key: value" lines, so
    a field's name is the detectors' cue ("phone: 0612345678") and its escapes are undone. Read leniently,
    since these turns are not checked: a value that is not text adds nothing."""
    texts: list[str] = []
    for i, msg in enumerate(messages):
        content = msg.get("content")
        role = msg.get("role")
        result = type(role) is str and role in _RESULT_ROLES  # a tool's result: often JSON
        if len(msg) == 2 and type(content) is str and "role" in msg:  # most turns, read in a third the time
            if i != asked:
                texts.append(_fields(content) if result else content)
            continue
        for key in _CONTEXT_FIELDS:
            value = msg.get(key)
            fields = result and key == "content"
            if isinstance(value, str):
                if i != asked or key != "content":
                    texts.append(_fields(value) if fields else value)
            elif isinstance(value, list):
                texts.extend(
                    _fields(text) if fields else text
                    for p in value
                    if isinstance(p, dict) and (i != asked or p.get("type") != "text")
                    for text in (p.get("text"), p.get("refusal"))
                    if isinstance(text, str)
                )
        if isinstance(name := msg.get("name"), str):  # OpenAI's names are [A-Za-z0-9_-]: "Xavrel_Quondt"
            texts.append("Name: " + name.replace("_", " "))
        calls = msg.get("tool_calls")
        for call in [*(calls if isinstance(calls, list) else ()), msg.get("function_call")]:
            if not isinstance(call, dict):
                continue
            # {"function": {name, arguments}}, a custom tool's {"custom": {name, input}}, or the legacy call itself
            function = call.get("function") or call.get("custom") or call
            if isinstance(function, dict):
                if isinstance(function.get("name"), str):
                    texts.append(function["name"])
                for key in ("arguments", "input"):
                    if function.get(key) is not None:
                        texts.append(_fields(function[key]))
    return "\n\n".join(t for t in texts if t.strip()) or None


_RESULT_ROLES = frozenset(("tool", "function"))


def _fields(value: object) -> str:
    """A JSON value (an object or array, or its text) as "key: value" lines of its strings and numbers, keys
    joined by dots; other text as it is. At most about twice the value's JSON text: past that (long keys over
    many values), the JSON text as it is."""
    if isinstance(value, str):
        if value.lstrip()[:1] not in ("{", "["):
            return value
        raw = value
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    else:
        try:
            raw = orjson.dumps(value).decode()
        except (TypeError, orjson.JSONEncodeError):
            return ""
    # Each string made is paid for once: a container's key path when it is reached, a line when it is written
    # (a child's path is made from its parent's and its own name only then, so a long key over many values
    # returns the text before they are built).
    budget = 2 * len(raw) + 1024
    lines: list[str] = []
    stack: list[tuple[str, str | None, object]] = [("", None, value)]
    while stack:
        parent, name, v = stack.pop()
        path = parent if name is None else f"{parent}.{name}" if parent else name
        if isinstance(v, dict):
            budget -= len(path)
            stack.extend((path, str(k), x) for k, x in reversed(v.items()))
        elif isinstance(v, list):
            budget -= len(path)
            stack.extend((path, None, x) for x in reversed(v))
        elif _scalar(v):
            lines.append(f"{path}: {v}" if path else str(v))
            budget -= len(lines[-1]) + 1
        if budget < 0:
            return raw
    return "\n".join(lines)


def _scalar(v: object) -> bool:
    return isinstance(v, str | int | float) and not isinstance(v, bool)


CONTEXT_AT = TRACE_COLUMNS.index(CONTEXT_PII)  # where chat_record_rows' rows hold the other turns' text


def with_context_pii(rows: list[tuple], memo: Memo | None = None, start: int = 0) -> int:
    """chat_record_rows' rows from `start` on (changed in place) with the text of their requests' other turns
    replaced by the PII it names (context_pii): the texts go through the PII prefilter and detectors together
    (a call costs milliseconds, a text microseconds), each distinct one once; `memo` (a batching.Memo, kept
    across calls) holds the pairs found in each text: a system prompt repeats on every request.

    Returns how many rows' other turns could not be searched: a detector failed on their text (a bug), and
    their context_pii is null; the other rows of the batch are searched one text at a time."""
    at = [i for i in range(start, len(rows)) if rows[i][CONTEXT_AT] is not None]
    if not at:
        return 0
    from flywheel_dagster.curation.pii import pair_ok

    pairs_of: dict[str, tuple | None] = {}
    for i in at:
        text = rows[i][CONTEXT_AT]
        if text not in pairs_of:
            pairs_of[text] = memo.get(text) if memo is not None else None
    unseen = [text for text, pairs in pairs_of.items() if pairs is None]
    failed = 0
    for text, pairs in zip(unseen, _pairs_found(unseen), strict=True):
        pairs_of[text] = pairs if memo is None or pairs is None else memo.keep(text, pairs)
    for i in at:
        row = rows[i]
        pairs = pairs_of[row[CONTEXT_AT]]
        failed += pairs is None
        kept = tuple(dict.fromkeys(p for p in pairs or () if pair_ok(*p)))  # what reads back as valid pairs
        rows[i] = (*row[:CONTEXT_AT], context_pii_value(kept), *row[CONTEXT_AT + 1 :])
    return failed


def _pairs_found(texts: list[str]) -> list[tuple | None]:
    """The (type, value) pairs the PII detectors find in each text, all at once, else one by one (None: they
    failed on it)."""
    from flywheel_dagster.curation.pii import redact_texts

    if not texts:
        return []
    try:
        return list(redact_texts([texts], True)[0][2])
    except Exception:  # noqa: BLE001 - a detector's bug: find the text it fails on, search the others
        found: list[tuple | None] = []
        for text in texts:
            try:
                found.append(redact_texts([[text]], True)[0][2][0])
            except Exception:  # noqa: BLE001
                found.append(None)
        return found


class _RepeatedKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return obj


def _repeated_key(raw: bytes, record: object) -> RecordError | None:
    """An `ambiguous_record` error when a key repeats in any object of the line; orjson keeps the last.

    The common path is a cheap exact test: every key-value pair has one colon outside strings, and
    orjson.dumps writes each colon inside a string as is, so the line and the re-serialized record hold
    the same number of colons exactly when no pair was dropped - unless the line escapes a colon as
    \\u003a. Only then, or when the counts differ, json.loads with a pairs hook finds the key. A line that
    orjson itself wrote (our gateway's capture) is its own re-serialization and needs no count at all."""
    if not isinstance(record, dict):
        return None  # not_an_object says more
    try:
        again = orjson.dumps(record)
    except orjson.JSONEncodeError:  # nested deeper than orjson.dumps goes (255): only the slow check can tell
        again = None
    if again is not None:
        if raw.startswith(again) and not raw[len(again) :].strip():  # written by orjson, as our gateway does
            return None
        if raw.count(b":") == again.count(b":") and (
            b"\\u003" not in raw or (b"\\u003a" not in raw and b"\\u003A" not in raw)
        ):
            return None
    try:
        json.loads(raw, object_pairs_hook=_unique_pairs)
    except _RepeatedKey as rep:
        key = f"key {rep.key!r}" if rep.key in _KNOWN_KEYS else f"a key of {len(rep.key)} chars"
        return RecordError("ambiguous_record", f"{key} repeats in one object (which value is meant?)")
    except RecursionError:
        return RecordError("bad_json", "nested too deep to check for repeated keys")
    return None
