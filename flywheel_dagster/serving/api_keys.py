"""Who a client is: its API key, looked up in serving.api_keys_file, or an operator's bearer token."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import yaml
from starlette.requests import Request


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
