"""The gateway's trace log: one JSON line per completion, by date, durable across a killed process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta

import pytest

from flywheel_dagster.serving.capture import TraceLog


def record(ts: str, i: int) -> dict:
    return {"timestamp": ts, "request_id": f"r-{i}", "request": {"messages": []}, "response": {"choices": []}}


def test_records_go_to_the_day_of_their_timestamp(tmp_path):  # noqa: ANN001
    now = [datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC)]
    log = TraceLog(tmp_path, gateway_id="gw", max_unsynced=2, clock=lambda: now[0])
    log.append(record("2026-03-31T23:59:59.000Z", 1))
    log.append(record("2026-03-31T23:59:59.500Z", 2))
    log.append(record("2026-04-01T00:00:00.100Z", 3))
    log.close()
    march = tmp_path / "date=2026-03-31" / "gw.jsonl"
    april = tmp_path / "date=2026-04-01" / "gw.jsonl"
    assert [json.loads(x)["request_id"] for x in march.read_text().splitlines()] == ["r-1", "r-2"]
    assert [json.loads(x)["request_id"] for x in april.read_text().splitlines()] == ["r-3"]
    assert log.stats.written == 3 and log.stats.files == [str(march), str(april)]
    assert log.stats.fsyncs >= 2  # after 2 unsynced records, and on the day change / close
    with pytest.raises(RuntimeError, match="closed"):
        log.append(record("2026-04-01T00:00:01.000Z", 4))


def test_a_record_without_a_timestamp_is_refused(tmp_path):  # noqa: ANN001
    log = TraceLog(tmp_path)
    with pytest.raises(ValueError, match="timestamp"):
        log.append({"request_id": "r"})
    log.close()
    with pytest.raises(ValueError, match="fsync_interval_s"):
        TraceLog(tmp_path, fsync_interval_s=0)


def test_a_killed_writer_keeps_every_acknowledged_record(tmp_path):  # noqa: ANN001
    """SIGKILL mid-stream: every record whose append() returned is in the file, whole; a long fsync interval
    shows the page cache, not an fsync, is what keeps them (the machine-crash window is the fsync interval)."""
    script = textwrap.dedent(
        f"""
        import sys
        from flywheel_dagster.serving.capture import TraceLog
        log = TraceLog({str(tmp_path)!r}, gateway_id="gw", fsync_interval_s=3600, max_unsynced=10**9)
        i = 0
        while True:
            i += 1
            log.append({{"timestamp": "2026-05-05T10:00:00.000Z", "request_id": f"r-{{i}}", "pad": "x" * 500}})
            print(i, flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    acked = 0
    deadline = time.monotonic() + 60
    while acked < 3000 and time.monotonic() < deadline:
        acked = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    lines = (tmp_path / "date=2026-05-05" / "gw.jsonl").read_bytes().splitlines()
    ids = [json.loads(line)["request_id"] for line in lines]  # every line parses: no torn record
    assert len(ids) >= acked >= 3000
    assert ids == [f"r-{i}" for i in range(1, len(ids) + 1)]


def test_the_background_fsync_bounds_the_open_buffer(tmp_path):  # noqa: ANN001
    log = TraceLog(tmp_path, fsync_interval_s=0.05, max_unsynced=10**6)
    ts = (datetime(2026, 5, 5, tzinfo=UTC) + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    log.append(record(ts, 1))
    deadline = time.monotonic() + 5
    while log.stats.fsyncs == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.stats.fsyncs >= 1 and log._unsynced == 0
    log.close()


@pytest.mark.parametrize("preset", ["playground", "smollm2"])
def test_the_served_chat_template_is_the_task_prompt(tmp_path, preset):  # noqa: ANN001
    """vLLM renders a chat turn exactly as the task prompts the model in training (BOS included when the
    tokenizer adds one), the trailing newline and the GSM8K instruction too."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from flywheel_dagster.base_models import build_char_tokenizer
    from flywheel_dagster.config import build_config
    from flywheel_dagster.serving.upstream import chat_template_for
    from flywheel_dagster.tasks import load_task
    from flywheel_dagster.tasks.playground import ALPHABET

    build_char_tokenizer(ALPHABET).save_pretrained(tmp_path)
    task = load_task(build_config({"preset": preset}))
    template = chat_template_for(task, tmp_path)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": " 12+7 "}]
    rendered = ImmutableSandboxedEnvironment().from_string(template).render(messages=messages, bos_token="<s>")
    assert rendered == "<s>" + task.prompt_for("12+7")
    assert rendered.endswith("\n")
