"""The chain itself: the format (canonical JSON, sha256, the tables and tags it lives in), appending an entry
and anchoring the new head in MLflow, and what an entry records: the genesis model, the files of a cycle's
partitions, the raw inputs of an ingest, an erasure's keyed subject. See the package's docstring."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from flywheel_dagster.hashing import legacy_tree_sha256, tree_sha256
from flywheel_dagster.records import (
    AUDIT_CHAIN,
    AUDIT_RECORD_FILE,
    AUDIT_REPORT_FILE,
    CYCLE_AUDIT,
    CYCLE_TABLES,
    EVALUATIONS,
    ApprovalRecord,
)
from flywheel_dagster.records import SOURCES_FILE as SOURCES_FILE  # re-exported by the package

if TYPE_CHECKING:
    from flywheel_dagster.registry import Registry
    from flywheel_dagster.traces.lake import Lake

# Format 2 hashes folder trees unambiguously and records the raw inputs; format 1 entries still verify.
SCHEMA = "flywheel.audit/2"
SCHEMA_1 = "flywheel.audit/1"
# Where the chain and its records live, from the one list of lake tables (records.py).
CHAIN_TABLE = AUDIT_CHAIN
AUDIT_TABLE = CYCLE_AUDIT
RECORD_FILE = AUDIT_RECORD_FILE
REPORT_FILE = AUDIT_REPORT_FILE
APPROVAL_TABLE = ApprovalRecord.TABLE
APPROVAL_FILE = ApprovalRecord.FILE
HEAD_TAG = "flywheel.audit_head_sha256"
RECORD_TAG = "flywheel.audit_record_sha256"
# Every file in the tables that hold one partition per cycle (CYCLE_TABLES) is audited, and the evaluations of
# the cycle's two models. The raw inputs a cycle ingested (log files outside the lake's cycle tables) are listed
# in its reasoning_traces partition (SOURCES_FILE) and copied into its record, so `verify` re-hashes them and
# notices files added since.
EVALUATIONS_TABLE = EVALUATIONS
# Entry fields that place an entry in the chain (and the format's name), as opposed to what it says.
_PLACEMENT = ("schema", "seq", "previous_sha256", "amends")


def canonical(entry: dict) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content(entry: dict) -> dict:
    """What an entry says, without where it sits in the chain (to tell an unchanged re-audit)."""
    return {k: v for k, v in entry.items() if k not in _PLACEMENT}


def subject_sha256(user_id: str, key: bytes) -> str:
    """How an erasure request names its user: HMAC-SHA256 under the deployment's secret key (erasure_key), so
    the chain keeps no personal data and a user id cannot be recovered by hashing candidate ids."""
    import hmac

    return hmac.new(key, f"flywheel-erasure:{user_id}".encode(), hashlib.sha256).hexdigest()


ERASURE_KEY_ENV = "FLYWHEEL_ERASURE_KEY"


def erasure_key(home: str | Path) -> bytes:
    """The deployment's secret for erasure subjects: $FLYWHEEL_ERASURE_KEY (hex, from a secret store), else
    `<home>/secrets/erasure.key`, made on first use (mode 0600). Not in the lake, beside the chain it keys."""
    import os
    import secrets

    if os.environ.get(ERASURE_KEY_ENV):
        try:
            return bytes.fromhex(os.environ[ERASURE_KEY_ENV])
        except ValueError:
            raise ValueError(f"${ERASURE_KEY_ENV}: expected the key as hex digits") from None
    path = Path(home) / "secrets" / "erasure.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def files_sha256(folder: str | Path, schema: str = SCHEMA) -> str:
    """Hash of a model's folder tree as the audit format `schema` computes it (format 2: unambiguous)."""
    return legacy_tree_sha256(folder) if schema == SCHEMA_1 else tree_sha256(folder)


class Chain:
    """The chain's entries in a lake (single writer: cycles run one after another, `forget` by hand)."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake

    def _names(self) -> list[str]:
        return sorted(self.lake.files(CHAIN_TABLE))

    def raw(self) -> list[tuple[str, bytes]]:
        """(file name, bytes) of every entry, oldest first."""
        return [(n, self.lake.read_object(CHAIN_TABLE, n)) for n in self._names()]

    def entries(self) -> list[dict]:
        return [json.loads(b) for _, b in self.raw()]

    def head_sha256(self) -> str | None:
        names = self._names()
        return sha256_bytes(self.lake.read_object(CHAIN_TABLE, names[-1])) if names else None

    def append(self, entry: dict) -> tuple[dict, str]:
        """Add an entry after the newest; returns the entry as stored and its sha256."""
        names = self._names()
        prev = sha256_bytes(self.lake.read_object(CHAIN_TABLE, names[-1])) if names else None
        seq = len(names) + 1
        stored = {"schema": SCHEMA, **entry, "seq": seq, "previous_sha256": prev}
        data = canonical(stored)
        self.lake.write_object(CHAIN_TABLE, f"{seq:06d}.json", data)
        return stored, sha256_bytes(data)

    def latest_cycle_records(self) -> dict[str, tuple[dict, str]]:
        """Each audited cycle's newest record and its sha256."""
        out = {}
        for _, data in self.raw():
            e = json.loads(data)
            if e.get("kind") == "cycle":
                out[e["cycle"]] = (e, sha256_bytes(data))
        return out


def genesis_entry(model_name: str, version: str, weights_sha256: str, files_sha: str, run_id: str | None) -> dict:
    return {
        "kind": "genesis",
        "model": {
            "name": model_name,
            "version": version,
            "weights_sha256": weights_sha256,
            "files_sha256": files_sha,
            "run_id": run_id,
        },
    }


def ensure_genesis(lake: Lake, registry: Registry) -> None:
    """Start the chain at the bootstrap base model (alias `base`) if it is empty."""
    from flywheel_dagster.registry import BASE, weights_sha256

    chain = Chain(lake)
    if chain.head_sha256() is not None:
        return
    base = registry.alias(BASE)
    if base is None:
        raise RuntimeError("no base model registered (alias 'base'): bootstrap the flywheel before auditing it")
    entry = genesis_entry(
        registry.model_name,
        base.version,
        weights_sha256(registry.local_path(base)),
        registry.files_sha256(base),
        base.run_id,
    )
    try:
        append_and_anchor(chain, registry, entry, check=lambda: _still_empty(chain))
    except _NotEmpty:  # another writer started it meanwhile
        pass


class _NotEmpty(Exception):
    pass


def _still_empty(chain: Chain) -> None:
    if chain.head_sha256() is not None:
        raise _NotEmpty


def append_and_anchor(
    chain: Chain, registry: Registry, entry: dict, check: Callable[[], None] | None = None
) -> tuple[dict, str]:
    """Append an entry to the chain and anchor the new head in MLflow (the experiment tag `verify` checks the
    head against): the one way anything is written to the audit chain, so no writer forgets the anchor. Under
    the lake's lock, so two writers (a cycle's audit step and an erasure request) neither take the same number
    nor anchor each other's head; `check` runs first, under it, and raises to refuse the entry."""
    with chain.lake.locked():
        if check is not None:
            check()
        stored, sha = chain.append(entry)
        registry.set_experiment_tag(HEAD_TAG, sha)
    return stored, sha


def lake_files(lake: Lake, cycle: str, evaluations: Sequence[str] = ()) -> list[dict]:
    """Every file of every cycle table's partition for `cycle`, plus the benchmark results `evaluations` (their
    partitions are per model version, not per cycle): table, file, sha256, bytes, rows."""
    import pyarrow.parquet as pq

    out = []
    for table, partition in [(t, cycle) for t in CYCLE_TABLES] + [(EVALUATIONS_TABLE, p) for p in evaluations]:
        for name in sorted(lake.files(table, partition)):
            digest, size = lake.file_sha256(table, partition, name)
            rows = None
            if name.endswith(".parquet"):
                with lake.fs.open_input_file(f"{lake.partition_dir(table, partition)}/{name}") as f:
                    rows = pq.ParquetFile(f).metadata.num_rows
            entry = {"table": table, "file": name, "sha256": digest, "bytes": size, "rows": rows}
            out.append(entry if partition == cycle else {**entry, "partition": partition})
    return out


def input_manifest(paths: list[str], window: tuple[str, str], files: list[str]) -> dict:
    """The raw inputs of an ingest: the configured paths, the window they were read for, each file's hash."""
    from flywheel_dagster.hashing import file_sha256

    listed = []
    for f in files:
        digest, size = file_sha256(f)
        listed.append({"path": str(Path(f).resolve()), "sha256": digest, "bytes": size})
    return {"paths": list(paths), "window": list(window), "files": listed}
