import pytest

from flywheel_dagster.config import PRESETS, ConfigError, build_config, load_config


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_validates(preset):
    cfg = build_config(preset=preset)
    assert cfg.preset == preset
    assert cfg.name


def test_overrides_merge_field_by_field():
    cfg = build_config({"traffic": {"problems_per_cycle": 7}})
    assert cfg.traffic.problems_per_cycle == 7
    assert cfg.traffic.samples_per_problem == 4  # untouched sibling keeps its default


def test_unknown_field_is_named(tmp_path):
    p = tmp_path / "flywheel.yaml"
    p.write_text("preset: playground\ntraffic:\n  problems_per_cycl: 10\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert "traffic.problems_per_cycl" in str(err.value)
    assert "unknown field" in str(err.value)
    assert str(p) in str(err.value)


def test_wrong_value_names_field_and_expectation():
    with pytest.raises(ConfigError) as err:
        build_config({"harvest": {"anchor_fraction": 1.5}})
    msg = str(err.value)
    assert "harvest.anchor_fraction" in msg and "less than 1" in msg and "1.5" in msg


def test_wrong_type_and_bad_preset():
    with pytest.raises(ConfigError, match="training.learning_rate"):
        build_config({"training": {"learning_rate": "fast"}})
    with pytest.raises(
        ConfigError, match=r"preset: expected one of \['playground', 'production', 'smollm2', 'smollm2-arithmetic'\]"
    ):
        build_config(preset="giant")


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="hf_path is required"):
        build_config({"model": {"kind": "hf"}})
    with pytest.raises(ConfigError, match="playground-tiny"):
        build_config({"task": {"source": "gsm8k"}, "model": {"kind": "playground-tiny"}})
    with pytest.raises(ConfigError, match="batch_size 10 does not divide among training.processes 4"):
        build_config({"training": {"batch_size": 10, "processes": 4}})
    with pytest.raises(ConfigError, match="sharding fsdp with training.lora"):
        build_config({"training": {"sharding": "fsdp", "lora": {"r": 8}}})
    with pytest.raises(ConfigError, match="engine.tensor_parallel 2 needs engine.kind 'vllm'"):
        build_config({"engine": {"tensor_parallel": 2, "replicas": 2}})
    assert build_config({"engine": {"kind": "vllm", "tensor_parallel": 2}}).engine.tensor_parallel == 2


def test_yaml_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(listy)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_a_named_preset_ignores_the_implicit_flywheel_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flywheel.yaml").write_text("preset: playground\ntraffic:\n  problems_per_cycle: 3000\n")
    assert load_config().traffic.problems_per_cycle == 3000
    smol = load_config(preset="smollm2")
    assert smol.preset == "smollm2" and smol.traffic.problems_per_cycle == 8
    explicit = load_config(tmp_path / "flywheel.yaml", preset="smollm2")  # a file named on purpose still applies
    assert explicit.preset == "smollm2" and explicit.traffic.problems_per_cycle == 3000


def test_repo_example_config_is_valid():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "flywheel.yaml")
    assert cfg.preset == "playground"


def test_training_method_and_its_settings_are_checked():
    with pytest.raises(ConfigError, match=r"training\.method: Input should be 'sft', 'redi', 'opsd' or 'grpo'"):
        build_config({"training": {"method": "ppo"}})
    with pytest.raises(ConfigError, match=r"training\.redi\.alpha: Input should be less than 1"):
        build_config({"training": {"method": "redi", "redi": {"alpha": 1.0}}})
    with pytest.raises(ConfigError, match=r"training\.lora\.registered_as"):
        build_config({"training": {"lora": {"registered_as": "both"}}})
    cfg = build_config({"training": {"method": "opsd", "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}}})
    from flywheel_dagster.training.candidate import train_settings

    settings = train_settings(cfg)
    assert settings.method == "opsd" and settings.opsd.clip == 0.05
    assert settings.lora.target_modules == ("q_proj", "v_proj") and settings.lora.registered_as == "merged"
    assert settings.on_policy.max_new_tokens == cfg.traffic.max_new_tokens  # defaults to traffic's


def test_the_ui_addresses_for_links_are_checked():
    cfg = build_config({"ui": {"dagster_url": "https://dagster.example/", "mlflow_url": "http://10.0.0.5:5000"}})
    assert cfg.ui.dagster_url == "https://dagster.example" and cfg.ui.mlflow_url == "http://10.0.0.5:5000"
    assert build_config().ui.dagster_url == "http://127.0.0.1:3000"
    with pytest.raises(ConfigError, match="ui.mlflow_url"):
        build_config({"ui": {"mlflow_url": "localhost:5000"}})


def test_a_setting_that_needs_ray_says_so_when_ray_is_missing(monkeypatch):
    """Ray is an extra (flywheel-dagster[ray]); without it, compute.engine ray or several engine replicas fail when
    the config is read, naming the setting and the install, not later as a step's ImportError. (Ray is installed
    here: find_spec stands in for an environment without it.)"""
    import importlib.util

    assert build_config({"compute": {"engine": "ray"}}).compute.engine == "ray"  # installed: fine
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ConfigError, match=r"compute.engine: ray needs Ray.*pip install 'flywheel-dagster\[ray\]'"):
        build_config({"compute": {"engine": "ray"}})
    with pytest.raises(ConfigError, match=r"engine.replicas: 2 needs Ray"):
        build_config({"engine": {"replicas": 2}})
    assert build_config({}).compute.engine == "local"  # the default needs no Ray
