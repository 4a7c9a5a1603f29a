"""The audit chain on its own: links, tampering, amendments and erasures, on a real lake folder."""

import json

import pytest

from flywheel_dagster import audit
from flywheel_dagster.traces.lake import Lake


def cycle_entry(q: str, files: dict[str, str]) -> dict:
    return {
        "kind": "cycle",
        "cycle": q,
        "files": [
            {"table": t, "file": "part-00000.parquet", "sha256": sha, "bytes": 1, "rows": 1} for t, sha in files.items()
        ],
        "models": {},
    }


@pytest.fixture
def chain(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    c = audit.Chain(lake)
    c.append(audit.genesis_entry("m", "1", "w" * 64, "f" * 64, "run"))
    c.append({**cycle_entry("2026-01-01", {"training_dataset": "a" * 64}), "amends": None})
    c.append({**cycle_entry("2026-04-01", {"training_dataset": "b" * 64}), "amends": None})
    return c


def test_entries_link_to_the_hash_of_the_entry_before(chain):
    raw = chain.raw()
    entries, problems, head = audit.verify_chain(raw)
    assert problems == [] and [e["seq"] for e in entries] == [1, 2, 3]
    assert entries[0]["previous_sha256"] is None and entries[0]["kind"] == "genesis"
    for (_, before), e in zip(raw, entries[1:], strict=False):
        assert e["previous_sha256"] == audit.sha256_bytes(before)
    assert head == audit.sha256_bytes(raw[-1][1]) == chain.head_sha256()
    # stored bytes are the canonical form, so a record's hash can be recomputed from its content
    assert raw[1][1] == audit.canonical(entries[1])


def test_changing_an_earlier_record_breaks_the_next_link(chain):
    path = f"{chain.lake.root}/{audit.CHAIN_TABLE}/000002.json"
    entry = json.loads(open(path).read())
    entry["files"][0]["sha256"] = "c" * 64  # someone "fixes" the recorded hash of a changed dataset
    open(path, "wb").write(audit.canonical(entry))
    _, problems, _ = audit.verify_chain(chain.raw())
    assert [(p.what, p.where) for p in problems] == [("chain", "000003.json")]
    assert "an earlier entry was changed" in problems[0].detail


def test_a_removed_entry_and_a_garbled_one_are_named(chain):
    chain.lake.delete_object(audit.CHAIN_TABLE, "000002.json")
    _, problems, _ = audit.verify_chain(chain.raw())
    assert {p.where for p in problems} == {"000003.json"}
    assert any("sequence number 3, expected 2" in p.detail for p in problems)
    open(f"{chain.lake.root}/{audit.CHAIN_TABLE}/000003.json", "w").write("{not json")
    _, problems, _ = audit.verify_chain(chain.raw())
    assert any(p.where == "000003.json" and "not valid JSON" in p.detail for p in problems)


def test_entries_are_never_overwritten(chain):
    with pytest.raises(FileExistsError, match="never rewritten"):
        chain.lake.write_object(audit.CHAIN_TABLE, "000002.json", b"{}")


def test_amendments_and_erasures_update_what_the_lake_should_hold(chain):
    q1 = "2026-01-01"
    files, records = audit.expected_state(chain.entries())
    assert files[("training_dataset", q1, "part-00000.parquet")] == "a" * 64
    # a rerun of Q1 re-audited: the amendment replaces Q1's files, Q2's stay
    chain.append({**cycle_entry(q1, {"training_dataset": "d" * 64, "harvested_traces": "e" * 64}), "amends": "x"})
    erasure = {
        "kind": "erasure",
        "rewritten": [
            {"table": "harvested_traces", "cycle": q1, "file": "part-00000.parquet", "sha256_after": "9" * 64}
        ],
    }
    chain.append(erasure)
    files, records = audit.expected_state(chain.entries())
    assert files[("training_dataset", q1, "part-00000.parquet")] == "d" * 64
    assert files[("harvested_traces", q1, "part-00000.parquet")] == "9" * 64
    assert files[("training_dataset", "2026-04-01", "part-00000.parquet")] == "b" * 64
    assert records[q1]["seq"] == 4
    assert audit.verify_chain(chain.raw())[1] == []


def test_content_ignores_the_entrys_place_in_the_chain():
    a = {"kind": "cycle", "cycle": "q", "seq": 2, "previous_sha256": "x", "amends": None, "files": []}
    b = {**a, "seq": 7, "previous_sha256": "y", "amends": "z"}
    assert audit.content(a) == audit.content(b)
    assert audit.content(a) != audit.content({**a, "files": [1]})


def test_the_erasure_subject_is_a_keyed_hash_not_the_user_id(tmp_path, monkeypatch):
    import hashlib

    monkeypatch.delenv(audit.ERASURE_KEY_ENV, raising=False)
    key = audit.erasure_key(tmp_path)
    assert key == audit.erasure_key(tmp_path) and len(key) == 32  # made once, then read back
    assert oct((tmp_path / "secrets" / "erasure.key").stat().st_mode & 0o777) == "0o600"
    s = audit.subject_sha256("u-17", key)
    assert len(s) == 64 and "u-17" not in s and s != audit.subject_sha256("u-18", key)
    # Enumerating candidate ids without the deployment's key finds nothing (the unsalted hash once did).
    assert s not in {hashlib.sha256(f"flywheel-erasure:u-{i}".encode()).hexdigest() for i in range(100)}
    assert s != audit.subject_sha256("u-17", audit.erasure_key(tmp_path / "other-deployment"))
    monkeypatch.setenv(audit.ERASURE_KEY_ENV, "ab" * 32)
    assert audit.erasure_key(tmp_path) == bytes.fromhex("ab" * 32)


def test_a_tree_hash_tells_apart_trees_that_the_old_encoding_confused(tmp_path):
    from flywheel_dagster.hashing import legacy_tree_sha256, tree_sha256

    a, b = tmp_path / "a", tmp_path / "b"
    (a / "x").mkdir(parents=True)
    (a / "x" / "w").write_bytes(b"")
    (a / "y").write_bytes(b"data")
    (b / "x").mkdir(parents=True)
    (b / "x" / "w").write_bytes(b"y\0data")  # path "x/w", NUL, then the next file's path and bytes
    assert legacy_tree_sha256(a) == legacy_tree_sha256(b)  # the ambiguity the outside probe found
    assert tree_sha256(a) != tree_sha256(b)
    assert audit.files_sha256(a, audit.SCHEMA_1) == legacy_tree_sha256(a)  # format-1 records still verify
    assert audit.files_sha256(a) == tree_sha256(a)


def test_an_input_rewritten_by_an_erasure_before_its_cycle_was_audited_is_expected_as_rewritten():
    """A cycle ingests a log (hash A), an erasure request rewrites it (A -> B), then the cycle is audited: its
    record names the log as ingested (A), and verify expects B, what the erasure's entry says it became (through
    each erasure in turn); a record before an erasure is moved on to its "after", as before."""
    from flywheel_dagster.audit.verification import expected_inputs

    inputs = {"paths": ["/logs"], "window": ["2026-01-01T00:00:00+00:00", "2026-04-01T00:00:00+00:00"]}

    def cycle(q: str, sha: str) -> dict:
        return {
            "kind": "cycle",
            "cycle": q,
            "inputs": {**inputs, "files": [{"path": f"/logs/{q}.jsonl", "sha256": sha}]},
        }

    def erasure(q: str, before: str, after: str) -> dict:
        rewritten = [{"path": f"/logs/{q}.jsonl", "sha256_before": before, "sha256_after": after}]
        return {"kind": "erasure", "inputs_rewritten": rewritten}

    entries = [
        cycle("q1", "a1"),
        erasure("q1", "a1", "b1"),
        erasure("q2", "a2", "b2"),
        erasure("q2", "b2", "c2"),
        cycle("q2", "a2"),
        cycle("q3", "a3"),
        erasure("q3", "x3", "y3"),
    ]
    got = {path: f["sha256"] for path, f in expected_inputs(entries).items()}
    assert got == {"/logs/q1.jsonl": "b1", "/logs/q2.jsonl": "c2", "/logs/q3.jsonl": "y3"}
