"""The transformers engine on a real (tiny, untrained) Llama with the playground tokenizer."""

import pytest

from flywheel_dagster.base_models import build_playground_model
from flywheel_dagster.config import ModelConfig
from flywheel_dagster.engines.base import SamplingSettings
from flywheel_dagster.engines.transformers_engine import TransformersEngine, load_engine
from flywheel_dagster.tasks.playground import ALPHABET


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    d = build_playground_model(
        ModelConfig(kind="playground-tiny", hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
        ALPHABET,
        tmp_path_factory.mktemp("m") / "model",
    )
    return TransformersEngine(d, device="cpu", batch_size=4)


def test_n_samples_per_prompt_in_order(engine):
    prompts = ["Q:1+2\n", "Q:345*7\n", "Q:9-3\n"]
    out = engine.generate(prompts, SamplingSettings(n=3, temperature=1.0, max_new_tokens=12, seed=1))
    assert [(c.prompt_index, c.sample_index) for c in out] == [(i, s) for i in range(3) for s in range(3)]
    for c in out:
        assert 1 <= c.tokens <= 12
        assert c.mean_logprob <= 0
        assert c.finish_reason in {"stop", "length"}
        if c.finish_reason == "length":
            assert c.tokens == 12  # ran to the limit without EOS
        assert "<pad>" not in c.text and "<s>" not in c.text


def test_sampling_is_seeded_and_greedy_is_deterministic(engine):
    prompts = ["Q:12+34\n", "Q:5*6\n"]
    s = SamplingSettings(n=2, temperature=1.0, max_new_tokens=10, seed=7)
    assert [c.text for c in engine.generate(prompts, s)] == [c.text for c in engine.generate(prompts, s)]
    g = SamplingSettings(n=2, temperature=0.0, max_new_tokens=10)
    a, b = engine.generate(prompts, g)[:2]
    assert a.text == b.text  # greedy: both samples of a prompt agree


def test_unknown_engine_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="engine.kind 'tgi'"):
        load_engine("tgi", tmp_path)
