"""A streamed chat completion put back together: the gateway relays the server-sent events to the client as
they come and captures the completion they add up to (the same record a plain request gives)."""

from __future__ import annotations

import orjson


class ChatStream:
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
