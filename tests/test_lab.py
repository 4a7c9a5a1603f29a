"""flywheel lab: arms as config overlays, the lead-time arithmetic, and a small real lab that is killed and resumed."""

from datetime import date

import pytest

from flywheel_dagster.config import build_config
from flywheel_dagster.lab.analysis import outcome, serving_curve
from flywheel_dagster.lab.arms import ArmError, select_arms
from flywheel_dagster.lab.runner import first_quarter, prepare, quarter_keys


def test_built_in_arms_are_overlays_of_one_base(tmp_path):
    base = build_config({"preset": "playground"}).model_dump(mode="json")
    arms = {a.name: a for a in select_arms(None, 8)}
    assert list(arms) == [
        "full",
        "full_gated",
        "no_verification",
        "no_anchors",
        "no_dedup",
        "anchors_only",
        "sft_then_rl",
        "self_consuming",
    ]
    cfg = {name: build_config(arm.config(base, 1)) for name, arm in arms.items()}
    off = cfg["self_consuming"].harvest
    assert (off.verify, off.anchor_fraction, off.dedup.exact, off.dedup.near_duplicates) == (False, 0.0, False, False)
    assert cfg["full"].gate.always_promote and not cfg["full_gated"].gate.always_promote
    assert not cfg["no_verification"].harvest.verify and cfg["full"].harvest.verify
    assert cfg["no_anchors"].harvest.anchor_fraction == 0.0
    assert not cfg["no_dedup"].harvest.dedup.exact and not cfg["no_dedup"].harvest.dedup.near_duplicates
    assert not cfg["anchors_only"].harvest.synthetic
    # everything an arm does not set is the base's
    assert all(c.traffic == cfg["full_gated"].traffic for c in cfg.values())
    rl = arms["sft_then_rl"]
    assert [build_config(rl.config(base, k)).training.method for k in range(1, 9)] == ["sft"] * 4 + ["grpo"] * 4
    assert build_config(rl.config(base, 5)).training.on_policy.prompts == "mixed"


def test_user_arms_and_their_errors(tmp_path):
    base = build_config({"preset": "playground"}).model_dump(mode="json")
    f = tmp_path / "arms.yaml"
    f.write_text("hot:\n  description: hotter traffic\n  overlay: {traffic: {temperature: 1.5}}\n")
    (hot,) = select_arms(["hot"], 2, f)
    assert build_config(hot.config(base, 1)).traffic.temperature == 1.5
    assert [a.name for a in select_arms(None, 2, f)][-1] == "hot"
    with pytest.raises(ArmError, match=r"unknown arms \['nope'\]"):
        select_arms(["nope"], 2)
    f.write_text("full:\n  overlay: {}\n")
    with pytest.raises(ArmError, match="shadow built-in arms"):
        select_arms(None, 2, f)
    f.write_text("typo:\n  overlay: {traffic: {temprature: 1.5}}\n")
    with pytest.raises(ArmError, match=r"(?s)lab arm typo, cycle 1.*traffic.temprature: unknown field"):
        prepare(tmp_path / "lab", base, select_arms(["typo"], 2, f), 2)


def test_quarters_and_a_resumed_lab_keeps_its_start_and_refuses_changed_arms(tmp_path):
    assert first_quarter(8, date(2026, 12, 3)) == "2024-10-01"
    assert quarter_keys("2024-10-01", 3) == ["2024-10-01", "2025-01-01", "2025-04-01"]
    base = build_config({"preset": "playground"}).model_dump(mode="json")
    lab = prepare(tmp_path, base, select_arms(["full"], 2), 2)
    again = prepare(tmp_path, base, select_arms(["full", "no_dedup"], 2), 2)
    assert again.quarters == lab.quarters and len(lab.quarters) == 2
    f = tmp_path / "arms.yaml"
    f.write_text("mine:\n  overlay: {traffic: {temperature: 1.5}}\n")
    prepare(tmp_path, base, select_arms(["mine"], 2, f), 2)
    f.write_text("mine:\n  overlay: {traffic: {temperature: 0.5}}\n")
    with pytest.raises(ArmError, match="arm 'mine' changed since it ran"):
        prepare(tmp_path, base, select_arms(["mine"], 2, f), 2)


def test_a_lab_started_by_an_older_version_resumes_and_another_base_is_refused(tmp_path):
    """A config field added since the lab started (here: training.processes) takes its default on both sides."""
    import json

    base = build_config({"preset": "playground"}).model_dump(mode="json")
    prepare(tmp_path, base, select_arms(["full"], 2), 2)
    spec = json.loads((tmp_path / "lab.json").read_text())
    del spec["base"]["training"]["processes"]  # as an older flywheel recorded it
    (tmp_path / "lab.json").write_text(json.dumps(spec))
    assert prepare(tmp_path, base, select_arms(["full"], 2), 2).quarters
    hotter = build_config({"preset": "playground", "traffic": {"temperature": 1.7}}).model_dump(mode="json")
    with pytest.raises(ArmError, match="this lab ran with another base config"):
        prepare(tmp_path, hotter, select_arms(["full"], 2), 2)


def _row(cycle, champion, candidate, decision="promoted", **monitors):
    overall = {
        "champion": champion,
        "champion_ci": [champion - 0.02, champion + 0.02],
        "candidate": candidate,
        "candidate_ci": [candidate - 0.02, candidate + 0.02],
        "delta": candidate - champion,
        "delta_ci": [0, 0],
    }
    healthy = {"distinct_3": 0.5, "near_duplicate_rate": 0.1, "answer_diversity": 0.3, "verified_accuracy": 0.4}
    return {"cycle": cycle, "suites": {"overall": overall}, "decision": decision, "monitors": healthy | monitors}


def test_lead_time_misses_and_false_alarms():
    levels = build_config({}).harvest.monitors
    # warned at cycle 2 (distinct-3 below 0.05), dropped more than 2 points below the best at cycle 4: lead 2
    collapse = [_row(1, 0.30, 0.34), _row(2, 0.34, 0.35, distinct_3=0.04), _row(3, 0.35, 0.34), _row(4, 0.34, 0.30)]
    o = outcome(collapse, levels)
    assert (o.first_warning, o.warned_by, o.first_drop, o.lead, o.verdict) == (2, ["distinct_3"], 4, 2, "lead 2")
    # a drop the monitors never saw
    o = outcome([_row(1, 0.30, 0.34), _row(2, 0.34, 0.31)], levels)
    assert (o.first_drop, o.verdict) == (2, "missed")
    # a warning with no drop after it
    o = outcome([_row(1, 0.30, 0.34, length_ks=0.4), _row(2, 0.34, 0.35)], levels)
    assert (o.first_warning, o.warned_by, o.verdict) == (1, ["length_ks"], "false alarm")
    # a dip inside the benchmark's noise (its CI reaches the best so far) is not a drop
    noisy = [_row(1, 0.30, 0.34), _row(2, 0.34, 0.31)]
    noisy[1]["suites"]["overall"]["candidate_ci"] = [0.25, 0.37]
    assert outcome(noisy, levels).verdict == "quiet"
    # verified accuracy 4 points below its best before (derived for cycles recorded without the monitor): it
    # warns at the drop's own cycle, in time to stop that model: lead 0
    feeding = [
        _row(1, 0.35, 0.35, verified_accuracy=0.40),
        _row(2, 0.35, 0.34, verified_accuracy=0.385),
        _row(3, 0.34, 0.31, verified_accuracy=0.36),
    ]
    o = outcome(feeding, levels)
    assert (o.first_warning, o.warned_by, o.first_drop, o.verdict) == (3, ["verified_accuracy_drop"], 3, "lead 0")
    # a rejected candidate leaves the champion serving: no drop however bad the candidate
    gated = [_row(1, 0.30, 0.34), _row(2, 0.34, 0.20, decision="rejected")]
    assert [p.accuracy for p in serving_curve(gated)] == [0.30, 0.34, 0.34]
    assert outcome(gated, levels).verdict == "quiet"


@pytest.mark.slow
def test_a_small_lab_killed_mid_run_resumes_where_it_stopped(tmp_path, trained_flywheel):
    """2 arms x 2 cycles of the tiny flywheel through `flywheel lab`: kill it once the first arm has finished a
    cycle, run it again, and every arm ends with both cycles, the finished one untouched."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import yaml
    from conftest import REPO, TINY

    base_dir = trained_flywheel.registry.local_path(trained_flywheel.base.ref)
    config = tmp_path / "flywheel.yaml"
    config.write_text(yaml.safe_dump({**TINY, "model": {"kind": "hf", "hf_path": str(base_dir), "max_length": 128}}))
    folder = tmp_path / "lab"
    flywheel = str(Path(sys.executable).parent / "flywheel")
    cmd = [flywheel, "lab", "--folder", str(folder), "--cycles", "2", "--arms", "full,no_verification"]
    cmd += ["--config", str(config), "--full-size", "--workers", "2"]
    first = folder / "arms" / "full" / "cycles.jsonl"
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while not (first.exists() and first.read_text().strip()) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = first.read_text().splitlines()
    assert len(kept) >= 1, (folder / "arms" / "full" / "log.txt").read_text()

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "full: starting at cycle 2 of 2" in again.stdout or "full: 2 cycles already done" in again.stdout
    for arm in ("full", "no_verification"):
        rows = [json.loads(line) for line in (folder / "arms" / arm / "cycles.jsonl").read_text().splitlines()]
        assert [r["cycle"] for r in rows] == [1, 2], arm
        assert all(r["decision"] == "promoted" for r in rows)  # both arms always promote
    assert (folder / "arms" / "full" / "cycles.jsonl").read_text().splitlines()[0] == kept[0]
    table = (folder / "lab.md").read_text()
    assert "| full |" in table and "| no_verification |" in table and (folder / "lab.png").stat().st_size > 10_000


@pytest.mark.slow
def test_a_lab_arm_stopped_after_its_benchmark_report_finishes_the_cycle_from_it(tmp_path, trained_flywheel):
    """An arm stopped after its cycle's benchmark report, before the lab recorded the cycle (its promotion may
    already have moved the champion): run again, it finishes from the report (benchmark_report from the cached
    evaluations, champion_model, cycle_audit) instead of training a new candidate, which would be benchmarked
    against the champion of before and refused. The stop is made deterministic by taking the recorded row away."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import yaml
    from conftest import REPO, TINY

    base_dir = trained_flywheel.registry.local_path(trained_flywheel.base.ref)
    config = tmp_path / "flywheel.yaml"
    config.write_text(yaml.safe_dump({**TINY, "model": {"kind": "hf", "hf_path": str(base_dir), "max_length": 128}}))
    folder = tmp_path / "lab"
    cmd = [str(Path(sys.executable).parent / "flywheel"), "lab", "--folder", str(folder), "--cycles", "1"]
    cmd += ["--arms", "full", "--config", str(config), "--full-size", "--workers", "1"]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    rows = folder / "arms" / "full" / "cycles.jsonl"
    (row,) = [json.loads(line) for line in rows.read_text().splitlines()]
    assert row["decision"] == "promoted"  # the champion moved: a new candidate of cycle 1 would be refused
    rows.write_text("")
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    (resumed,) = [json.loads(line) for line in rows.read_text().splitlines()]
    assert resumed["decision"] == "promoted" and resumed["suites"] == row["suites"]
    assert "candidate_model" not in resumed["steps"] and "benchmark_report" in resumed["steps"]
