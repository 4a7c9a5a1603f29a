"""The audit chain: an append-only, hash-linked log of every cycle's record and every erasure request.

Entries live in the lake under `audit_chain/`, one file per entry (`000001.json`, ...), each the canonical
JSON of the entry (sorted keys, no spaces), so an entry's sha256 is the sha256 of its file. Each entry
holds the sha256 of the entry before it; the first is the genesis entry, the bootstrap base model. The
sha256 of the newest entry is also kept outside the lake, as a tag on the MLflow experiment, so rewriting
the whole chain consistently is still caught.

Kinds:
- `genesis`: the base model (version, weights and files hashes).
- `cycle`: one quarter's record (written by the `cycle_audit` asset). A rerun of an audited quarter that
  changed something appends an amendment (`amends` = the sha256 of the record it replaces); nothing is
  ever rewritten. Re-auditing an unchanged quarter appends nothing.
- `erasure`: a `flywheel forget` request: which files were rewritten (hash before and after), how many
  rows each lost, and which model versions were trained on data that held the user's traces.

`verify` re-hashes every file and model that the newest entries refer to and walks the links.

Modules: chain.py (the format, appending, what entries record), verification.py (`verify`), ancestry.py
(`lineage`), report.py (the HTML page). Every name is importable from `flywheel_dagster.audit`.
"""

from flywheel_dagster.audit.ancestry import lineage
from flywheel_dagster.audit.chain import (
    APPROVAL_FILE,
    APPROVAL_TABLE,
    AUDIT_TABLE,
    CHAIN_TABLE,
    CYCLE_TABLES,
    ERASURE_KEY_ENV,
    EVALUATIONS_TABLE,
    HEAD_TAG,
    RECORD_FILE,
    RECORD_TAG,
    REPORT_FILE,
    SCHEMA,
    SCHEMA_1,
    SOURCES_FILE,
    Chain,
    append_and_anchor,
    canonical,
    content,
    ensure_genesis,
    erasure_key,
    files_sha256,
    genesis_entry,
    input_manifest,
    lake_files,
    sha256_bytes,
    subject_sha256,
)
from flywheel_dagster.audit.report import approval_line, render_html
from flywheel_dagster.audit.verification import Mismatch, expected_inputs, expected_state, verify, verify_chain

__all__ = [
    "APPROVAL_FILE",
    "APPROVAL_TABLE",
    "AUDIT_TABLE",
    "CHAIN_TABLE",
    "CYCLE_TABLES",
    "ERASURE_KEY_ENV",
    "EVALUATIONS_TABLE",
    "HEAD_TAG",
    "RECORD_FILE",
    "RECORD_TAG",
    "REPORT_FILE",
    "SCHEMA",
    "SCHEMA_1",
    "SOURCES_FILE",
    "Chain",
    "Mismatch",
    "append_and_anchor",
    "approval_line",
    "canonical",
    "content",
    "ensure_genesis",
    "erasure_key",
    "expected_inputs",
    "expected_state",
    "files_sha256",
    "genesis_entry",
    "input_manifest",
    "lake_files",
    "lineage",
    "render_html",
    "sha256_bytes",
    "subject_sha256",
    "verify",
    "verify_chain",
]
