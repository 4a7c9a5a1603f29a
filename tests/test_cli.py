"""The `flywheel` command's own behaviour (its long end-to-end runs are in test_end_to_end.py)."""

import pytest
from typer.testing import CliRunner

from flywheel_dagster.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def restore_environment(monkeypatch):
    """The CLI exports its home and config to the environment (the code location reads them); undo that."""
    for name in ("FLYWHEEL_HOME", "FLYWHEEL_CONFIG", "FLYWHEEL_PRESET", "DAGSTER_HOME"):
        monkeypatch.setenv(name, "")  # recorded as it was (absent or not), restored after the test
        monkeypatch.delenv(name)


def test_bad_config_exits_2_and_names_the_field(tmp_path):
    bad = tmp_path / "flywheel.yaml"
    bad.write_text("preset: playground\ngate:\n  max_regresion: 0.1\n")
    result = runner.invoke(app, ["status", "--config", str(bad), "--home", str(tmp_path / "home")])
    assert result.exit_code == 2
    assert "gate.max_regresion" in result.output and "unknown field" in result.output


def test_status_on_an_empty_home_says_what_to_do(tmp_path):
    result = runner.invoke(app, ["status", "--home", str(tmp_path / "home")])
    assert result.exit_code == 0
    assert "flywheel bootstrap" in result.output


def test_status_lists_cycles_and_decisions(trained_flywheel, tmp_path, monkeypatch):
    import dagster as dg
    from conftest import ASSETS, CHECKS

    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [*ASSETS, *CHECKS], partition_key="2026-01-01", resources=trained_flywheel.resources, instance=instance
        )
    assert result.success
    out = runner.invoke(
        app, ["status", "--home", str(trained_flywheel.root / "home"), "--config", str(trained_flywheel.config_path)]
    )
    assert out.exit_code == 0, out.output
    assert "2026-01-01:" in out.output and ("promoted" in out.output or "rejected" in out.output)
    assert "base v1" in out.output
    # the compliance commands on the same home
    home = ["--home", str(trained_flywheel.root / "home"), "--config", str(trained_flywheel.config_path)]
    out = runner.invoke(app, ["audit", "verify", *home])
    assert out.exit_code == 0 and "audit verify: ok" in out.output, out.output
    out = runner.invoke(app, ["audit", "show", "--cycle", "2026-01-01", *home])
    assert out.exit_code == 0, out.output
    assert "decision" in out.output and "no_pii" in out.output and "training_dataset" in out.output
    out = runner.invoke(app, ["audit", "show", "--cycle", "2030-01-01", *home])
    assert out.exit_code == 2 and "no audit record" in out.output and "2026-01-01" in out.output
    from flywheel_dagster.records import Candidate

    candidate = Candidate.read(trained_flywheel.lake, "2026-01-01").version
    out = runner.invoke(app, ["audit", "lineage", "--model-version", candidate, *home])
    assert out.exit_code == 0 and "trained in cycle 2026-01-01" in out.output and "genesis" in out.output
    # simulated traffic carries no user ids: the request is recorded, nothing is removed, verify still holds
    out = runner.invoke(app, ["forget", "--user-id", "u-404", "--by", "DPO desk", *home])
    assert out.exit_code == 0 and "0 rows removed" in out.output, out.output
    assert runner.invoke(app, ["audit", "verify", *home]).exit_code == 0
    out = runner.invoke(app, ["approve", "--cycle", "2026-01-01", "--by", "Ana", *home])
    assert out.exit_code == 2 and "require_approval is false" in out.output


@pytest.mark.parametrize("key", ["not-a-date", "1999-01-01", "2026-02-01"])
def test_a_cycle_key_that_is_no_partition_is_one_line_before_anything_runs(tmp_path, key):
    home = tmp_path / "home"
    result = runner.invoke(app, ["cycle", key, "--home", str(home)])
    assert result.exit_code == 2, result.output
    assert f"cycle '{key}' is not a partition" in " ".join(result.output.split())
    assert "2025-10-01" in result.output  # the valid keys are named (./flywheel.yaml's start_date on)
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert not (home / "models").exists()  # no bootstrap ran first


def test_forget_before_bootstrap_says_what_to_do(tmp_path):
    result = runner.invoke(app, ["forget", "--user-id", "u-1", "--by", "DPO", "--home", str(tmp_path / "home")])
    assert result.exit_code == 2, result.output
    assert "bootstrap the flywheel" in result.output and "Traceback" not in result.output


def test_a_home_that_is_a_file_is_refused_by_name(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    result = runner.invoke(app, ["status", "--home", str(f)])
    assert result.exit_code == 2 and "is a file, not a folder" in result.output, result.output


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("traffic: {source: logs}\ningest:\n  paths: [no/such/logs]\n", "ingest.paths: 'no/such/logs' matches no file"),
        ("task: {source: gsm8k, data_dir: /no/such/gsm8k}\nmodel: {kind: hf, hf_path: x}\n", "task.data_dir"),
        ("schedule:\n  start_date: 2026-01-01\n", "quote it, e.g. '2026-01-01'"),
        ("schedule:\n  start_date: '2026-02-01'\n", "first day of a quarter"),
    ],
)
def test_config_errors_found_when_the_file_is_read(tmp_path, yaml_text, expected):
    cfg = tmp_path / "flywheel.yaml"
    cfg.write_text(yaml_text)
    result = runner.invoke(app, ["status", "--config", str(cfg), "--home", str(tmp_path / "home")])
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split()) and "Traceback" not in result.output
