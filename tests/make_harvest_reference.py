"""The harvest's reference outputs on a fixed input: what a faster ingest and harvest must reproduce exactly.

    .venv/bin/python tests/make_harvest_reference.py          # writes tests/data/harvest_reference/

Written once from the per-row implementation at commit 901b07c (the ingest and harvest before issue #18's
speed work) and committed; tests/test_harvest_reference.py runs the current code on the same input and
compares every output with these files. Regenerate only on purpose, when a change of behaviour is meant.

The input (input.jsonl.gz) holds, for the playground and for GSM8K word problems, gateway log records from
`loggen` (correct and corrupted answers, both reasoning styles, inline <think>, repeat questions, PII in 2% of
user turns) plus: the PII corpus's texts as questions and answers (every PII type, in prompts, reasoning and
answers), benchmark questions (decontamination), truncated and repetitive generations, exact copies of
earlier records under new request ids, records with a reference answer in metadata, several choices in one
record, and every kind of broken line the ingest quarantines.
"""

from __future__ import annotations

import gzip
import json
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "tests" / "data" / "harvest_reference"
START, END = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
TASKS = ("playground", "gsm8k")
MODES = ("exact", "near")


def make_task(name: str):  # noqa: ANN201
    from flywheel_dagster.tasks.gsm8k import GSM8KTask
    from flywheel_dagster.tasks.playground import PlaygroundTask

    return PlaygroundTask() if name == "playground" else GSM8KTask()


def input_lines(task_name: str, n: int, seed: int) -> list[bytes]:
    from flywheel_dagster.curation import loggen

    task = make_task(task_name)
    rng = random.Random(seed)
    problems = task.traffic(seed, max(40, n // 12))
    records = list(loggen.synthetic_records(task, problems, n, START, END, seed=seed))
    when = START + timedelta(days=3)
    corpus = [json.loads(line)["text"] for line in (ROOT / "tests/data/pii_corpus.jsonl").read_text().splitlines()]
    extra: list[dict] = []
    for i, text in enumerate(corpus[: n // 10]):  # PII everywhere: question, reasoning, answer
        question, _, rest = text.partition("\n")
        extra.append(
            loggen.record(
                question,
                rest,
                reasoning=rest if i % 3 == 0 else None,
                timestamp=when,
                request_id=f"pii-{i}",
                user_id=f"u-pii-{i}",
            )
        )
    for i, p in enumerate(task.benchmark(20, 0)[:25]):  # benchmark questions asked in production
        extra.append(loggen.record(p.prompt, p.solution, timestamp=when, request_id=f"bench-{i}"))
    for i, r in enumerate(rng.sample(records, n // 20)):  # exact copies under new request ids
        extra.append({**r, "request_id": f"copy-{i}"})
    for i, p in enumerate(problems[:15]):
        extra.append(  # truncated
            loggen.record(
                p.prompt,
                p.solution[: len(p.solution) // 2],
                timestamp=when,
                request_id=f"trunc-{i}",
                finish_reason="length",
            )
        )
        extra.append(  # repetitive reasoning
            loggen.record(
                p.prompt, "so " * 60 + "the answer is 3 so " * 20 + "\n#### 3", timestamp=when, request_id=f"rep-{i}"
            )
        )
        extra.append(  # a reference answer in metadata (right for even i, wrong for odd)
            loggen.record(
                p.prompt,
                p.solution,
                timestamp=when,
                request_id=f"ref-{i}",
                reference=p.reference if i % 2 == 0 else "123456",
                model_version=f"v{i}",
            )
        )
    for i, p in enumerate(problems[15:25]):  # several choices in one record
        r = loggen.record(p.prompt, p.solution, timestamp=when, request_id=f"multi-{i}")
        r["response"]["choices"].append(
            {"index": 1, "message": {"role": "assistant", "content": "no idea"}, "finish_reason": "stop"}
        )
        r["response"]["usage"] = {"completion_tokens": 40, "prompt_tokens": 12}
        extra.append(r)
    extra.append(loggen.record("Q: 1+1=", "2", timestamp=START - timedelta(days=1), request_id="early"))
    everything = records + extra
    rng.shuffle(everything)
    lines = [orjson.dumps(r) for r in everything]
    broken = list(loggen.BROKEN_LINES.values()) + [
        b'{"timestamp": "2026-01-02T00:00:00Z", "timestamp": "2026-01-03T00:00:00Z"}',  # ambiguous
        b'{"timestamp": "2026-01-02T00:00:00", "request": {}, "response": {}}',  # no time zone
        b"",  # a blank line: not a record
        b'{"timestamp": 12, "request": {}, "response": {}}',
    ]
    for i, line in enumerate(broken):
        lines.insert((i + 1) * len(lines) // (len(broken) + 2), line)
    return lines


def run(task_name: str, path: Path, near: bool, memory_keys: int | None = None) -> dict[str, object]:
    """The ingest and the harvest on `path`, as the reasoning_traces and harvested_traces assets run them
    (`memory_keys`: the harvest's state spills to disk past that many keys a store)."""
    from flywheel_dagster.config import build_config
    from flywheel_dagster.curation import ingest
    from flywheel_dagster.curation.harvest import Harvester

    cfg = build_config({"harvest": {"dedup": {"near_duplicates": near}}})
    task = make_task(task_name)
    ingestor = ingest.Ingestor(task, ingest.Settings("2026-01-01", ingest.Window(START, END)), batch_rows=512)
    harvester = Harvester(task, cfg.harvest, [p.prompt for p in task.benchmark(20, 0)], memory_keys=memory_keys)
    traces, quarantine, harvested = [], [], []
    for table, bad in ingestor.tables([str(path)]):
        traces.append(table)
        quarantine.append(bad)
        harvested.append(harvester.process(table))
    quarantined = pa.concat_tables(quarantine)
    files = pa.array([Path(f).name for f in quarantined.column("file").to_pylist()], pa.string())
    return {
        "traces": pa.concat_tables(traces),
        "quarantine": quarantined.set_column(0, quarantined.schema.field(0), files),  # where the file was: not kept
        "harvested": pa.concat_tables(harvested),
        "summary": {
            "ingest": ingestor.stats.as_metadata(),
            "counts": harvester.stats.as_counts(),
            "pii": dict(sorted(harvester.stats.pii.items())),
            "monitors": harvester.monitors.result(None),
        },
        "spilled": [store.spilled for store in harvester.state],
    }


def input_path(task_name: str) -> Path:
    return OUT / f"{task_name}.input.jsonl.gz"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    sizes = {"playground": (3000, 11), "gsm8k": (600, 12)}
    for task_name in TASKS:
        n, seed = sizes[task_name]
        with gzip.GzipFile(input_path(task_name), "wb", compresslevel=9, mtime=0) as f:
            f.write(b"\n".join(input_lines(task_name, n, seed)) + b"\n")
        plain = OUT / f"{task_name}.input.jsonl"
        plain.write_bytes(gzip.decompress(input_path(task_name).read_bytes()))
        summaries = {}
        for mode in MODES:
            result = run(task_name, plain, mode == "near")
            if mode == "exact":
                pq.write_table(result["traces"], OUT / f"{task_name}.traces.parquet", compression="zstd")
                pq.write_table(result["quarantine"], OUT / f"{task_name}.quarantine.parquet", compression="zstd")
            pq.write_table(result["harvested"], OUT / f"{task_name}.{mode}.harvested.parquet", compression="zstd")
            summaries[mode] = result["summary"]
            print(task_name, mode, json.dumps(result["summary"]["counts"]))
        (OUT / f"{task_name}.summary.json").write_text(json.dumps(summaries, indent=1, sort_keys=True) + "\n")
        plain.unlink()


if __name__ == "__main__":
    main()
