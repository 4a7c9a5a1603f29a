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


def test_a_short_write_is_cut_back_and_the_next_record_starts_a_line(tmp_path):  # noqa: ANN001
    """A real short write: the file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) lets the kernel take part of the
    line, then EFBIG, as a full disk does. append() raises and leaves only whole lines; once there is room again
    the next record is a line of its own, not glued to a fragment (one bad_json line, a trace lost)."""
    script = textwrap.dedent(
        f"""
        import errno, json, resource, signal
        from flywheel_dagster.serving.capture import TraceLog
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        log = TraceLog({str(tmp_path)!r}, gateway_id="gw")
        rec = lambda i: {{"timestamp": "2026-05-05T10:00:00.000Z", "request_id": f"r-{{i}}", "pad": "x" * 1000}}
        for i in (1, 2, 3):
            log.append(rec(i))
        path = log.path_for("2026-05-05")
        whole = path.stat().st_size
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (whole + 300, hard))  # room for 300 bytes of a 1 kB line
        try:
            log.append(rec(4))
            failed = None
        except OSError as err:
            failed = err.errno
        after = path.stat().st_size
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # the disk has room again
        log.append(rec(5))
        log.close()
        print(json.dumps({{"errno": failed, "efbig": errno.EFBIG, "whole": whole, "after": after,
                          "written": log.stats.written, "failures": log.stats.write_failures}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["errno"] == out["efbig"]  # the write failed, so the gateway answers 503
    assert out["after"] == out["whole"]  # the 300 bytes the kernel took are gone again
    assert (out["written"], out["failures"]) == (4, 1)
    lines = (tmp_path / "date=2026-05-05" / "gw.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == ["r-1", "r-2", "r-3", "r-5"]


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


def test_a_log_rewritten_by_an_erasure_keeps_every_line_the_gateway_appends(tmp_path):  # noqa: ANN001
    """flywheel forget replaces a serving log without the user's lines while the gateway keeps writing: the
    writer reopens the new file, nothing it appended is lost, and the erased lines do not come back."""
    import threading

    from flywheel_dagster.erasure import _needles, rewrite_log

    log = TraceLog(tmp_path, gateway_id="gw", fsync_interval_s=3600)
    rec = lambda i, user: {"timestamp": "2026-05-05T10:00:00Z", "user_id": user, "i": i}  # noqa: E731
    for i in range(200):
        log.append(rec(i, "u-gone" if i % 4 == 0 else "u-stays"))
    path = tmp_path / "date=2026-05-05" / "gw.jsonl"
    done = threading.Event()

    def keep_appending() -> None:
        for i in range(200, 2200):
            log.append(rec(i, "u-stays"))
        done.set()

    writer = threading.Thread(target=keep_appending)
    writer.start()
    removed = rewrite_log(path, _needles("u-gone"))
    writer.join()
    for i in range(2200, 2300):  # after the rewrite for certain: these go to the new file, not the old inode
        log.append(rec(i, "u-stays"))
    log.close()
    assert done.is_set() and removed == 50
    records = [json.loads(x) for x in path.read_text().splitlines()]
    assert sorted(r["i"] for r in records) == [i for i in range(2300) if not (i < 200 and i % 4 == 0)]
    assert all(r["user_id"] == "u-stays" for r in records)
