from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel_dagster.config import build_config
from flywheel_dagster.curation.harvest import DROP_REASONS, Harvester, build_training_dataset, harvest
from flywheel_dagster.curation.monitors import judge
from flywheel_dagster.curation.reformat import template
from flywheel_dagster.tasks.playground import PlaygroundTask
from flywheel_dagster.traces.schema import TRACE_SCHEMA, trace_id


def _cfg(**harvest_overrides):
    return build_config({"harvest": harvest_overrides}).harvest


def _traces(task, completions):
    """Trace rows for (problem, completion) pairs, as reasoning_traces writes them."""
    rows = []
    for i, (p, text) in enumerate(completions):
        rows.append(
            {
                "trace_id": trace_id("c", "1", p.problem_id, p.prompt, i),
                "cycle": "c",
                "source": "simulated",
                "model_name": "m",
                "model_version": "1",
                "problem_id": p.problem_id,
                "suite": p.suite,
                "prompt": p.prompt,
                "completion": text,
                "reasoning": text,
                "answer": None,
                "reference_answer": p.reference,
                "correct": None,
                "verifier": None,
                "verdict": None,
                "tokens": len(text),
                "mean_logprob": -0.1,
                "finish_reason": "stop",
                "sample_index": i,
                "created_at": datetime.now(UTC),
            }
        )
    return pa.Table.from_pylist(rows, schema=TRACE_SCHEMA)


@pytest.fixture(scope="module")
def task():
    return PlaygroundTask()


def _with(table, name, values):
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values, table.schema.field(name).type))


def test_labels_and_counts_account_for_every_trace(task):
    a, b = task.traffic(0, 2)
    wrong = a.solution.replace(f"A:{a.reference}", f"A:{int(a.reference) + 1}")
    traces = _traces(task, [(a, a.solution), (a, a.solution), (a, wrong), (b, b.solution), (b, b.solution + "1")])
    traces = _with(traces, "reference_answer", [a.reference] * 3 + [b.reference, None])
    result = harvest(traces, task, _cfg(max_positives_per_problem=1))
    assert result.harvested.column("label").to_pylist() == [
        "positive",
        "dropped",
        "negative",
        "positive",
        "unverifiable",
    ]
    assert result.harvested.column("drop_reason").to_pylist()[1] == "exact_duplicate"
    c = result.counts
    assert (c["read"], c["positive"], c["negative"], c["unverifiable"], c["dropped"]) == (5, 2, 1, 1, 1)
    assert c["read"] == c["positive"] + c["negative"] + c["unverifiable"] + sum(c[f"drop/{r}"] for r in DROP_REASONS)
    assert result.harvested.column("correct").to_pylist()[:4] == [True, True, False, True]


def test_every_drop_reason_is_counted(task):
    """One trace per reason code, each dropped for exactly that reason."""
    ps = task.traffic(0, 12)
    bench = task.benchmark(2, 99)[0]
    long_ok = ps[5].solution
    cases = [
        ("decontaminated", bench, bench.solution, "stop"),
        ("format_violation", ps[0], "x" + ps[0].solution, "stop"),
        ("truncated", ps[1], ps[1].solution, "length"),
        ("too_short", ps[2], "1", "stop"),
        ("too_long", ps[3], ";".join(f"{i}+0={i}:{i}" for i in range(80)) + "\nA:79", "stop"),
        ("repetition", ps[4], "1+1=2:2;" * 10 + "\nA:2", "stop"),
        ("missing_final_answer", ps[6], ps[6].solution.split("\n")[0], "stop"),
        ("exact_duplicate", ps[5], long_ok, "stop"),
        ("near_duplicate", ps[5], long_ok.replace("\nA:", ";:0\nA:"), "stop"),
        # a different correct solution (extra partial-only steps), neither duplicate nor near duplicate
        ("positives_per_problem_cap", ps[5], ";".join(f":{i}" for i in range(10, 50)) + ";" + long_ok, "stop"),
    ]
    rows = [(ps[5], long_ok)] + [(p, text) for _, p, text, _ in cases]
    traces = _traces(task, rows)
    traces = _with(traces, "finish_reason", ["stop"] + [f for *_, f in cases])
    cfg = _cfg(
        max_positives_per_problem=1,
        filters={"min_completion_chars": 2, "max_completion_chars": 400},
        dedup={"jaccard_threshold": 0.5, "num_perm": 128},
    )
    result = harvest(traces, task, cfg, benchmark_prompts=[bench.prompt])
    reasons = result.harvested.column("drop_reason").to_pylist()
    assert reasons[0] is None
    assert reasons[1:] == [reason for reason, *_ in cases]
    assert sorted(cases[i][0] for i in range(len(cases))) == sorted(DROP_REASONS)
    assert all(result.counts[f"drop/{r}"] == 1 for r in DROP_REASONS)


def test_decontamination_drops_a_benchmark_question_in_any_wrapping():
    from flywheel_dagster.curation.decontam import BenchmarkIndex
    from flywheel_dagster.tasks.gsm8k import GSM8KTask

    gsm = GSM8KTask(prompt_format="chatml")
    bench = gsm.benchmark(50, 1)
    index = BenchmarkIndex([p.prompt for p in bench], 8, gsm.prompt_for("{}"))
    question = bench[7].prompt.split("\n")[1]
    assert index.contaminated(bench[7].prompt)
    assert index.contaminated(gsm.prompt_for("Hi! Quick one: " + question[: len(question) // 2]))  # a long shared span
    # the shared instruction line alone is not contamination
    assert not index.contaminated(gsm.prompt_for("How many apples are left if Tom eats two of five?"))


def test_decontamination_matches_a_plain_window_scan():
    """The n-gram check (zip over shifted token lists) against the window-by-window scan it replaced, on short
    and long benchmark questions (the playground's are matched whole), an empty one included."""
    import random

    from flywheel_dagster.curation.decontam import BenchmarkIndex
    from flywheel_dagster.curation.dedup import tokens

    rng = random.Random(3)
    words = "a b c d e f 1 2 + = ?".split()
    bench = [" ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(40)]

    def scan(index: BenchmarkIndex, toks: list[str]) -> bool:
        sizes = ([(index.n, index.grams)] if index.grams else []) + list(index.short.items())
        return any(hash(tuple(toks[i : i + n])) in hashes for n, hashes in sizes for i in range(len(toks) - n + 1))

    for extra in ([], [""]):
        index = BenchmarkIndex(bench + extra, 8)
        prompts = [" ".join(rng.choices(words, k=rng.randint(0, 30))) for _ in range(400)]
        got = [index.contaminated(p) for p in prompts]
        assert got == [scan(index, tokens(p)) for p in prompts]
        assert (0 < sum(got) < len(got)) if not extra else all(got)


def test_near_duplicates_are_found_across_batches():
    from flywheel_dagster.curation.dedup import NearDuplicateIndex

    base = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."
    index = NearDuplicateIndex(0.7, num_perm=128)
    first = index.check_and_add(index.signatures([base, "Weng earns $12 an hour for babysitting today."]))
    second = index.check_and_add(index.signatures([base.replace("48", "49"), "A completely different question?"]))
    assert first == [False, False] and second == [True, False]


def test_pii_is_redacted_in_harvested_text_and_maths_kept(task):
    from flywheel_dagster.tasks.gsm8k import GSM8KTask

    gsm = GSM8KTask()
    p = gsm.traffic(0, 1)[0]
    text = "I'm Laura Chen, mail laura.chen@example.com. 4532015112830366 + 1 = 4532015112830367.\n#### 7"
    traces = _traces(gsm, [(p, text)])
    traces = _with(traces, "prompt", [p.prompt + " Call me at (415) 555-0132."])
    traces = _with(traces, "reasoning", [text.split("\n")[0]])
    out = harvest(traces, gsm, _cfg()).harvested.to_pylist()[0]
    assert "<PHONE>" in out["prompt"] and "555" not in out["prompt"]
    assert out["completion"].startswith("I'm <PERSON>, mail <EMAIL>. 4532015112830366 + 1 = 4532015112830367")
    assert out["pii_types"] == "EMAIL,PERSON,PHONE"


def test_training_dataset_mixes_anchors_and_pairs_negatives(task):
    problems = task.traffic(0, 30)
    wrong = [(p, p.solution.replace(f"A:{p.reference}", f"A:{int(p.reference) + 1}")) for p in problems[:5]]
    harvested = harvest(_traces(task, [(p, p.solution) for p in problems] + wrong), task, _cfg()).harvested
    cfg = _cfg(anchor_fraction=0.25, validation_fraction=0.2)
    result = build_training_dataset(harvested, task.anchors(100, 1), cfg, task)
    comp = result.composition
    assert comp["synthetic"] == 30 and comp["human"] == 10 and comp["synthetic_fraction"] == 0.75
    assert result.table.num_rows == 40
    assert set(result.table.column("split").to_pylist()) == {"train", "validation"}
    by_problem = {}
    for r in result.table.to_pylist():
        by_problem.setdefault(r["problem_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_problem.values())  # no problem on both sides of the split
    pairs = result.pairs.to_pylist()
    assert comp["pairs"] == len(pairs) == 5
    for pair, (p, bad) in zip(pairs, wrong, strict=True):
        assert (pair["prompt"], pair["chosen"], pair["rejected"]) == (p.prompt, p.solution, bad)


def test_reformat_strategies_mix_by_weight_and_stay_verifiable():
    from flywheel_dagster.tasks.gsm8k import GSM8KTask

    gsm = GSM8KTask()
    problems = gsm.traffic(0, 200)
    harvested = harvest(_traces(gsm, [(p, p.solution) for p in problems]), gsm, _cfg()).harvested
    cfg = _cfg(anchor_fraction=0.0, reformat={"as_is": 1, "concise": 1, "qa": 1, "steps": 1})
    result = build_training_dataset(harvested, [], cfg, gsm)
    counts = {k: v for k, v in result.composition.items() if k.startswith("strategy/")}
    assert set(counts) == {"strategy/as_is", "strategy/concise", "strategy/qa", "strategy/steps"}
    assert all(30 <= v <= 70 for v in counts.values()), counts
    ref = {p.problem_id: p.reference for p in problems}
    for r in result.table.to_pylist():
        assert gsm.verify(r["completion"], ref[r["problem_id"]]).correct, (r["strategy"], r["completion"])
    steps = template("steps", gsm, problems[0].prompt, problems[0].solution)
    assert steps.startswith("1. ") and "\n2. " in steps


def test_playground_refuses_prose_strategies(task):
    harvested = harvest(_traces(task, [(p, p.solution) for p in task.traffic(0, 3)]), task, _cfg()).harvested
    with pytest.raises(ValueError, match=r"task 'playground' cannot use strategies \['steps'\]"):
        build_training_dataset(harvested, [], _cfg(reformat={"as_is": 1, "steps": 1}), task)


def test_monitors_fire_on_a_collapsed_trace_set(task):
    """A healthy quarter passes; a collapsed one (one reasoning and one answer for everything) is blocked."""
    problems = task.traffic(0, 300)
    healthy = _traces(task, [(p, p.solution) for p in problems for _ in range(2)])
    healthy = _with(healthy, "trace_id", [f"{i:024x}" for i in range(healthy.num_rows)])
    cfg = _cfg()
    h = harvest(healthy, task, cfg)
    from flywheel_dagster.curation.harvest import Harvester

    good = Harvester(task, cfg, [])
    good.process(healthy)
    good_fig = good.monitors.result(None)
    collapsed_text = problems[0].solution
    collapsed = _traces(task, [(p, collapsed_text) for p in problems for _ in range(2)])
    collapsed = _with(collapsed, "trace_id", [f"{i:024x}" for i in range(collapsed.num_rows)])
    bad = Harvester(task, cfg, [])
    bad.process(collapsed)
    bad_fig = bad.monitors.result(good_fig["reasoning_lengths"])
    levels = {
        name: judge(name, bad_fig[name], cfg.monitors).level
        for name in ("distinct_3", "answer_diversity", "length_ks", "verified_accuracy")
    }
    assert levels == {
        "distinct_3": "block",
        "answer_diversity": "warn",
        "length_ks": "block",
        "verified_accuracy": "warn",
    }, bad_fig
    assert judge("distinct_3", good_fig["distinct_3"], cfg.monitors).level == "ok"
    assert judge("verified_accuracy", good_fig["verified_accuracy"], cfg.monitors).level == "ok"
    assert h.counts["read"] == 600


def test_no_positives_is_a_clear_error(task):
    (a,) = task.traffic(0, 1)
    harvested = harvest(_traces(task, [(a, "1+1=3:3\nA:3")]), task, _cfg()).harvested
    with pytest.raises(
        ValueError, match=r"no verified positive traces to distill from \(1 harvested traces: \{'negative': 1\}\)"
    ):
        build_training_dataset(harvested, task.anchors(10, 1), _cfg(), task)


def test_anchors_needed_share_and_floor():
    from flywheel_dagster.curation.harvest import anchors_needed

    assert anchors_needed(30, 0.25) == 10  # 10 / (30 + 10) = 0.25
    assert anchors_needed(30, 0.0) == 0
    assert anchors_needed(0, 0.5, min_examples=8) == 8  # no positives: the floor fills the set
    assert anchors_needed(100, 0.5, min_examples=8) == 100


def test_the_anchor_pool_covers_the_mix_and_the_all_human_control():
    """The pool drawn before the training set is built covers what build_training_dataset takes: the share (or
    the floor), and for `synthetic: false` (the lab's anchors_only arm) the positives' places too."""
    from flywheel_dagster.config import build_config
    from flywheel_dagster.curation.harvest import anchor_pool, anchors_needed

    mix = build_config({"harvest": {"anchor_fraction": 0.5}}).harvest
    human = build_config({"harvest": {"anchor_fraction": 0.5, "synthetic": False}}).harvest
    assert anchor_pool(628, mix) == anchors_needed(628, 0.5) + 1 == 629
    assert anchor_pool(628, human) == 628 + 628 + 1  # was 629: the lab's anchors_only arm failed at cycle 1


def test_human_anchors_are_redacted_too():
    """GSM8K's human solutions name people with titles ("Mr. Benson"); the training set must not."""
    from flywheel_dagster.curation import pii
    from flywheel_dagster.tasks.gsm8k import GSM8KTask

    gsm = GSM8KTask()
    titled = [p for p in gsm.anchors(2000, 0) if "Mr. " in p.prompt or "Mrs. " in p.prompt][:20]
    assert titled
    positives = harvest(_traces(gsm, [(p, p.solution) for p in gsm.traffic(0, 5)]), gsm, _cfg()).harvested
    result = build_training_dataset(positives, titled, _cfg(anchor_fraction=0.75, min_training_examples=20), gsm)
    assert result.composition["human_pii_redacted/PERSON"] >= 20
    assert sum(pii.count_detections(result.table.column(c)).total() for c in ("prompt", "completion")) == 0


def test_monitor_texts_name_only_the_levels_that_are_set():
    from flywheel_dagster.config import MonitorConfig, ThresholdConfig

    cfg = MonitorConfig().model_copy(update={"answer_diversity_min": ThresholdConfig(warn=0.2, block=None)})
    ok = judge("answer_diversity", 0.5, cfg).message
    assert ok == "answer_diversity = 0.5 (warn below 0.2)" and "None" not in ok
    off = MonitorConfig().model_copy(update={"answer_diversity_min": ThresholdConfig()})
    assert judge("answer_diversity", 0.5, off).message == "answer_diversity = 0.5 (no warn or block level set)"
    assert judge("answer_diversity", 0.1, cfg).message == "answer_diversity = 0.1 is below the warn level 0.2"


def test_lab_switches_verification_exact_dedup_and_traces_off(task):
    """The lab's arms: no_verification trains on wrong traces, no_dedup keeps copies, anchors_only drops traces."""
    a, b = task.traffic(0, 2)
    wrong = a.solution.replace(f"A:{a.reference}", f"A:{int(a.reference) + 1}")
    traces = _traces(task, [(a, a.solution), (a, a.solution), (a, wrong), (b, b.solution)])
    labels = lambda **h: harvest(traces, task, _cfg(**h)).harvested.column("label").to_pylist()  # noqa: E731
    assert labels() == ["positive", "dropped", "negative", "positive"]
    # (near dedup off: the wrong trace differs from the right one in one character)
    assert labels(verify=False, dedup={"near_duplicates": False}) == ["positive", "dropped", "positive", "positive"]
    assert labels(dedup={"exact": False, "near_duplicates": False}) == ["positive", "positive", "negative", "positive"]
    # the copy stays in, but the near_duplicate_rate monitor still sees it (it read 0.0 with dedup off before)
    h = Harvester(task, _cfg(dedup={"exact": False, "near_duplicates": False}), [])
    h.process(traces)
    assert h.monitors.result(None)["near_duplicate_rate"] == 0.25
    # the verdict stays recorded when nothing trusts it: the monitors' verified accuracy still sees it
    assert harvest(traces, task, _cfg(verify=False)).harvested.column("correct").to_pylist() == [
        True,
        True,
        False,
        True,
    ]

    harvested = harvest(traces, task, _cfg()).harvested
    mixed = build_training_dataset(harvested, task.anchors(10, 1), _cfg(anchor_fraction=0.5), task)
    control = build_training_dataset(harvested, task.anchors(10, 1), _cfg(anchor_fraction=0.5, synthetic=False), task)
    assert mixed.table.num_rows == control.table.num_rows == 4
    assert set(control.table.column("origin").to_pylist()) == {"human"} and control.composition["synthetic"] == 0
    assert control.pairs.num_rows == 0 and control.prompts.num_rows == mixed.prompts.num_rows


def test_verified_accuracy_drop_is_measured_from_the_best_quarter_before():
    from flywheel_dagster.config import MonitorConfig
    from flywheel_dagster.curation.monitors import MonitorAccumulator

    def quarter(correct: int, previous: dict | None) -> dict:
        m = MonitorAccumulator(50)
        for i in range(100):
            m.add(f"t{i}", f"p{i}", "r", "1", i < correct)
        return m.result(None, previous)

    first = quarter(40, None)
    assert first["verified_accuracy_drop"] is None and first["verified_accuracy_best"] == 0.4
    second = quarter(45, first)
    third = quarter(41, second)  # 4 points below the best before it (0.45), not the quarter just before
    assert (second["verified_accuracy_drop"], second["verified_accuracy_best"]) == (-0.05, 0.45)
    assert (third["verified_accuracy_drop"], third["verified_accuracy_best"]) == (0.04, 0.45)
    levels = MonitorConfig()
    assert judge("verified_accuracy_drop", third["verified_accuracy_drop"], levels).level == "warn"
    assert judge("verified_accuracy_drop", 0.02, levels).level == "ok"
    # a monitors.json written before this monitor existed: its own verified accuracy is the best known
    assert quarter(30, {"verified_accuracy": 0.4})["verified_accuracy_drop"] == 0.1


def test_the_band_index_answers_as_datasketchs_minhash_lsh():
    """The near-dedup index (a KeyStore of band hashes) against datasketch's MinHashLSH, the oracle, on the same
    signatures: texts edited by a word or two, copies and unrelated texts, in one stream; whole, and in batches
    with room in memory for 256 band keys, the rest spilled to disk."""
    import random

    from datasketch import LeanMinHash, MinHashLSH

    from flywheel_dagster.curation.dedup import NearDuplicateIndex

    rng = random.Random(3)
    words = [f"w{i}" for i in range(60)]
    texts = []
    for _ in range(400):
        if texts and rng.random() < 0.5:
            t = rng.choice(texts).split()
            t[rng.randrange(len(t))] = rng.choice(words)
            texts.append(" ".join(t))
        else:
            texts.append(" ".join(rng.choice(words) for _ in range(40)))
    for threshold in (0.5, 0.8, 0.9):
        index = NearDuplicateIndex(threshold, 64, 3)
        sigs = index.signatures(texts)
        oracle, answers = MinHashLSH(threshold=threshold, num_perm=64), []
        for i, sig in enumerate(sigs):
            m = LeanMinHash(seed=1, hashvalues=sig, scheme="legacy")
            answers.append(bool(oracle.query(m)))
            if not answers[-1]:
                oracle.insert(i, m, check_duplication=False)
        assert index.check_and_add(sigs) == answers
        assert 20 < sum(answers) < 380  # both kinds of answer occur
        small = NearDuplicateIndex(threshold, 64, 3, memory_keys=256)
        assert [d for lo in range(0, len(sigs), 37) for d in small.check_and_add(sigs[lo : lo + 37])] == answers
        assert small.bands.spilled > 256 and small.bands.memory_bytes < 256 * 8 * 2


def test_repeated_traces_get_the_same_results_however_batched_and_whatever_the_memos_hold(task):
    """The harvest works on each distinct trace content once (within a batch, and across batches through
    bounded memos); splitting the quarter into small batches and shrinking every memo to a few entries, so
    that they forget as they go, changes no label, redaction or count."""
    from flywheel_dagster.curation.batching import Memo

    ps = task.traffic(0, 6)
    pairs = [(p, p.solution) for p in ps] + [(ps[0], ps[0].solution.replace("A:", "I am Laura Chen. A:"))]
    pairs = [pairs[i % len(pairs)] for i in (0, 1, 6, 0, 2, 6, 1, 3, 4, 5, 0, 6, 2, 2, 5, 4, 6, 3, 1, 0)]
    traces = _traces(task, pairs)
    whole = Harvester(task, _cfg(), [])
    want = whole.process(traces)
    small = Harvester(task, _cfg(), [])
    small.rows._rows, small.rows._verified, small.rows._redacted = Memo(2), Memo(2), Memo(3)
    got = pa.concat_tables([small.process(traces.slice(i, 3)) for i in range(0, traces.num_rows, 3)])
    assert got.to_pylist() == want.to_pylist()
    assert small.stats.as_counts() == whole.stats.as_counts() and small.stats.pii == whole.stats.pii
    # The name is in 4 traces, in the completion and the reasoning of each: every repeat is counted.
    assert whole.stats.pii["PERSON"] == 8 and whole.stats.as_counts()["drop/exact_duplicate"] > 0


def test_minhash_signatures_are_the_universal_hashs_values_in_python_integers():
    """The batched numpy MinHash gives exactly min over the shingles of ((a * x + b) mod (2^61 - 1)) & (2^32 - 1),
    computed here in Python integers: short texts (one shingle), long ones, Unicode, many documents in chunks."""
    from flywheel_dagster.curation.dedup import NearDuplicateIndex, shingles

    index = NearDuplicateIndex(0.9, 64, 3)
    perms = list(zip(map(int, index._a), map(int, index._b), strict=True))

    def minhash(values: list[int]) -> list[int]:
        return [min(((a * x + b) % ((1 << 61) - 1)) & 0xFFFFFFFF for x in values) for a, b in perms]

    texts = ["a", "x y", "Straße ÉCOLE naïve", " ".join(f"t{i}" for i in range(300)), "Q:127-106 7-6=1:1;A:21"]
    texts += [f"{i} {i * 7919 % 1000} apples and {i % 13} pears" for i in range(80)]
    sigs = index.signatures(texts)
    assert [s.tolist() for s in sigs[::7]] == [minhash(shingles(t, 3)) for t in texts[::7]]
    # Chunks of any size, a document longer than its chunk's budget included, give the same signatures.
    for budget in (1, 40, 100_000):
        assert (index.signatures(texts, chunk_shingles=budget) == sigs).all()


def test_signatures_of_a_head_and_a_body_equal_those_of_the_joined_text():
    """signatures_of(heads, bodies), which keeps each head's own part, gives the signatures of head + newline +
    body: heads repeated within a batch and across batches (the part remembered), texts of fewer tokens than a
    shingle, empty heads and bodies, words that split into several tokens, Unicode whose case folds longer."""
    import random

    from flywheel_dagster.curation.batching import Memo
    from flywheel_dagster.curation.dedup import NearDuplicateIndex

    rng = random.Random(5)
    words = ["a", "b", "x,y", "Straße", "ÉCOLE", "5,000", "  ", "\n", "(3+4)", "=", "7", "İ"]

    def text(k: int) -> str:
        return (" " if rng.random() < 0.8 else "").join(rng.choice(words) for _ in range(k))

    for size, remembered in ((1, 100), (2, 100), (3, 100), (5, 100), (3, 2)):  # 2: heads forgotten mid-batch
        index = NearDuplicateIndex(0.8, 16, size)
        index._heads = Memo(remembered)
        heads = [text(rng.randint(0, 8)) for _ in range(12)]
        for _ in range(60):
            hs = [rng.choice(heads) for _ in range(rng.randint(1, 20))]
            bodies = [text(rng.randint(0, 10)) for _ in hs]
            expected = index.signatures([h + "\n" + b for h, b in zip(hs, bodies, strict=True)])
            assert (index.signatures_of(hs, bodies) == expected).all()
        assert 0 < len(index._heads) <= min(len(heads), remembered)


def test_the_universal_hash_without_division_equals_python_integers_at_the_edges():
    """MinHash's (a * x + b) mod (2^61 - 1), folded instead of divided, at the values where a fold can land on
    the prime or just above it: x at 0, 1 and 2^32 - 1, a and b up to p - 1, and sums that are p exactly."""
    from flywheel_dagster.curation.dedup import _universal_hash

    p = (1 << 61) - 1
    xs = [0, 1, 2, 3, (1 << 31) - 1, 1 << 31, (1 << 32) - 2, (1 << 32) - 1]
    ab = [1, 2, (1 << 30) - 1, 1 << 30, (1 << 31) - 1, 1 << 60, p - 2, p - 1]
    a = np.array([x for x in ab for _ in ab] + [p - 1, 1], dtype=np.uint64)
    b = np.array([y for _ in ab for y in ab] + [1, p - 1], dtype=np.uint64)  # the last two: x = 1 sums to p
    values = _universal_hash(np.array(xs, dtype=np.uint64)[:, None], a[None, :], b[None, :])
    expected = [[((int(ai) * x + int(bi)) % p) & 0xFFFFFFFF for ai, bi in zip(a, b, strict=True)] for x in xs]
    assert values.tolist() == expected
    assert values[1, -2] == 0 and values[1, -1] == 0


def test_the_repetition_filter_answers_as_the_repeated_fraction_does():
    """repeats_too_much (bounded by the distinct first tokens before it counts n-grams) agrees with
    repeated_fraction > limit on texts from varied to a loop of a few words, at every limit."""
    import random

    from flywheel_dagster.curation.harvest import repeated_fraction, repeats_too_much

    rng = random.Random(5)
    texts = ["", "a", "a b c d", "x " * 50, "Q:1+2 1+2=3:3;A:3"]
    for _ in range(300):
        words = [f"w{i}" for i in range(rng.choice([2, 3, 5, 20, 200]))]
        texts.append(" ".join(rng.choice(words) for _ in range(rng.randrange(1, 120))))
    for n in (1, 3, 4):
        for limit in (0.05, 0.3, 0.6, 0.9, 1.0):
            got = [repeats_too_much(t, n, limit) for t in texts]
            assert got == [repeated_fraction(t, n) > limit for t in texts]
            assert 0 < sum(got) < len(texts) or limit == 1.0


_TEXT = st.text(st.sampled_from("aZ9_ßİſK٣５ .,+-=\t\n\u00a0\u2009\u3000é!?$%") | st.characters(), max_size=60)


@settings(max_examples=400, deadline=None)
@given(_TEXT)
def test_tokens_word_by_word_are_the_regex_tokens(text):
    """dedup.tokens splits on whitespace and runs the regex only on words that are not letters and digits
    alone: the same tokens as the regex over the whole case-folded text, for any Unicode text."""
    from flywheel_dagster.curation import dedup

    assert dedup.tokens(text) == dedup._TOKEN.findall(text.casefold())


def test_the_word_token_cache_stays_bounded(monkeypatch):
    from flywheel_dagster.curation import dedup

    monkeypatch.setattr(dedup, "_WORD_TOKENS_MAX", 3)
    monkeypatch.setattr(dedup, "_WORD_TOKENS", {})
    texts = ["She has 3 apples. 3 + 15 = 18", "Tom's $5.50, ½ of it!", "a b c d e f g", "ſtraße İstanbul 18."]
    for text in texts * 2:
        assert dedup.tokens(text) == dedup._TOKEN.findall(text.casefold())
        assert len(dedup._WORD_TOKENS) <= 3


def test_answer_diversity_follows_a_bounded_uniform_sample_of_prompts():
    """Up to prompt_sample prompts (and answer_pairs pairs): every prompt; beyond: exactly the prompts with the
    smallest digests, each with all its traces, whatever order they come in; memory holds no more than that."""
    import random

    import numpy as np

    from flywheel_dagster.curation.monitors import MonitorAccumulator, digest64

    rng = random.Random(11)
    traces = [(f"p{p}", str(rng.randrange(3))) for p in range(40) for _ in range(rng.randint(1, 6))]
    rng.shuffle(traces)

    def diversity(prompts: set[str]) -> float:
        per = {p: [a for q, a in traces if q == p] for p in prompts}
        return round(float(np.mean([(len(set(a)) - 1) / (len(a) - 1) for a in per.values() if len(a) >= 2])), 4)

    everyone = {p for p, _ in traces}
    for most, followed in ((100, everyone), (5, set(sorted(everyone, key=digest64)[:5]))):
        m = MonitorAccumulator(10, prompt_sample=most)
        for i, (prompt, answer) in enumerate(traces):
            m.add(f"t{i}", prompt, "r", answer, answer == "1")
            assert len(m._answers) <= most and len(m._samples_per_prompt) <= most
        figures = m.result(None)
        assert figures["answer_diversity"] == diversity(followed)
        assert figures["verified_accuracy"] == round(sum(a == "1" for _, a in traces) / len(traces), 4)
    # At most 12 distinct (prompt, answer) pairs: fewer prompts, still those with the smallest digests, each with
    # all its traces.
    m = MonitorAccumulator(10, answer_pairs=12)
    for i, (prompt, answer) in enumerate(traces):
        m.add(f"t{i}", prompt, "r", answer, answer == "1")
        assert m._pairs == sum(len(s) for s in m._answers.values()) <= 12
    followed = {p for p in everyone if digest64(p) in m._samples_per_prompt}
    assert 3 <= len(followed) < 12 and followed == set(sorted(everyone, key=digest64)[: len(followed)])
    assert m.result(None)["answer_diversity"] == diversity(followed)


def test_answer_diversity_of_a_prompt_with_more_answers_than_the_bound_stays_bounded():
    """One prompt alone past answer_pairs distinct answers: its set is freed and its figure is that of its first
    samples, up to the one that passed the bound; its later samples change nothing, and other prompts are still
    followed, in the bound again."""
    from flywheel_dagster.curation.monitors import MonitorAccumulator, digest64

    m = MonitorAccumulator(10, answer_pairs=50)
    # 40 samples of 20 answers, then ever new answers: the 51st distinct answer is the 71st sample
    answers = [str(k % 20) for k in range(40)] + [f"new{k}" for k in range(1000)]
    for i, answer in enumerate(answers):
        m.add(f"t{i}", "the prompt", "r", answer, None)
        assert m._pairs <= 50 and sum(len(s) for s in m._answers.values()) <= 50
    key = digest64("the prompt")
    assert m._frozen == {key: 51} and m._samples_per_prompt[key] == 71 and not m._answers
    assert m.result(None)["answer_diversity"] == round((51 - 1) / (71 - 1), 4)
    for i, answer in enumerate(["a", "a", "b", "a"]):
        m.add(f"u{i}", "another prompt", "r", answer, None)
    assert m._pairs == 2 and m._samples_per_prompt[key] == 71
    assert m.result(None)["answer_diversity"] == round(((51 - 1) / (71 - 1) + (2 - 1) / (4 - 1)) / 2, 4)


def test_training_dataset_past_max_training_prompts_is_that_of_the_smallest_digest_prompts(task):
    """Past max_training_prompts the training set is exactly what the same harvested rows give with only the
    prompts of the smallest digests in them (each with all its positives, pairs and on-policy prompt), and the
    traces left out are counted; below the bound nothing changes."""
    from flywheel_dagster.curation.monitors import digest64

    problems = task.traffic(0, 40)
    right = [(p, p.solution) for p in problems for _ in range(2)]
    wrong = [(p, p.solution.replace(f"A:{p.reference}", f"A:{int(p.reference) + 1}")) for p in problems[::2]]
    rows = right + wrong
    rows = [rows[(7 * i) % len(rows)] for i in range(len(rows))]  # interleaved: a prompt's traces far apart
    traces = _traces(task, rows)
    harvested = harvest(traces, task, _cfg(dedup={"exact": False, "near_duplicates": False})).harvested
    anchors = task.anchors(200, 1)
    whole = build_training_dataset(harvested, anchors, _cfg(), task)
    assert whole.composition["traces_not_sampled"] == 0 and whole.composition["prompts"] == 40
    same = build_training_dataset(harvested, anchors, _cfg(max_training_prompts=40), task)
    assert same.table.equals(whole.table) and same.pairs.equals(whole.pairs) and same.prompts.equals(whole.prompts)

    sampled = build_training_dataset(harvested, anchors, _cfg(max_training_prompts=12), task)
    smallest = set(sorted({p.prompt for p in problems}, key=digest64)[:12])
    labels = harvested.column("label").to_pylist()
    prompts = harvested.column("prompt").to_pylist()
    keep = [lab not in ("positive", "negative") or p in smallest for lab, p in zip(labels, prompts, strict=True)]
    expected = build_training_dataset(harvested.filter(pa.array(keep)), anchors, _cfg(), task)
    assert sampled.table.equals(expected.table) and sampled.pairs.equals(expected.pairs)
    assert sampled.prompts.equals(expected.prompts) and set(sampled.prompts.column("prompt").to_pylist()) == smallest
    with_negative = len(smallest & {p.prompt for p in problems[::2]})  # a negative: a pair
    assert 0 < with_negative < 12
    assert sampled.composition["synthetic"] == 24 and sampled.composition["pairs"] == with_negative
    assert sampled.composition["traces_not_sampled"] == 100 - (24 + with_negative)


def test_a_prompt_under_two_problem_ids_pairs_every_positive_it_can(task):
    """The harvest caps positives per problem id, so one prompt text under two ids can hold twice the cap: each
    positive still gets the next negative of its prompt, and anchors drawn by size cover what it takes."""
    import dataclasses

    p = task.traffic(0, 1)[0]
    q = dataclasses.replace(p, problem_id=p.problem_id + "-dup")  # the same prompt text, another problem id
    wrong = p.solution.replace(f"A:{p.reference}", f"A:{int(p.reference) + 1}")
    rows = [(p, wrong)] * 4 + [(p, p.solution)] * 2 + [(q, p.solution)] * 2
    cfg = _cfg(max_positives_per_problem=2, dedup={"exact": False, "near_duplicates": False})
    harvested = harvest(_traces(task, rows), task, cfg).harvested
    assert harvested.column("label").to_pylist() == ["negative"] * 4 + ["positive"] * 4
    one = _cfg(max_positives_per_problem=2, max_training_prompts=1, anchor_fraction=0.5)
    sizes = []
    result = build_training_dataset(harvested, lambda n: sizes.append(n) or task.anchors(n, 1), one, task)
    ids = harvested.column("trace_id").to_pylist()
    assert [(r["chosen_trace_id"], r["rejected_trace_id"]) for r in result.pairs.to_pylist()] == list(
        zip(ids[4:], ids[:4], strict=True)
    )
    assert sizes == [5] and result.composition["synthetic"] == 4 and result.composition["human"] == 4


def test_a_prompt_frozen_for_its_many_answers_gives_the_same_figure_in_any_order_under_the_pairs_bound():
    """A prompt past prompt_answers distinct answers is fixed at its figure then, whether the other prompts come
    before, after or between its samples, as long as the pairs stay under answer_pairs: they stay followed (with
    answer_pairs the only bound, the others were dropped when they came first and kept when they came after).
    Once the pairs bound binds, which prompts are followed still depends on the order, as it always has."""
    import random

    from flywheel_dagster.curation.monitors import MonitorAccumulator

    heavy = [("heavy", f"a{k}") for k in range(200)]
    light = [(f"p{k}", "same") for k in range(30) for _ in range(3)]
    interleaved = light + heavy
    random.Random(5).shuffle(interleaved)
    figures = set()
    for traces in (heavy + light, light + heavy, interleaved):
        m = MonitorAccumulator(10, answer_pairs=50, prompt_answers=10)
        for i, (prompt, answer) in enumerate(traces):
            m.add(f"t{i}", prompt, "r", answer, None)
            assert m._pairs <= 50
        assert list(m._frozen.values()) == [11] and len(m._samples_per_prompt) == 31
        figures.add(m.result(None)["answer_diversity"])
    assert figures == {round((1.0 + 30 * 0.0) / 31, 4)}  # heavy: 11 answers in 11 samples; the others: one each


class _MemorisingEngine:
    """Stands for a served model that memorised a phone number and writes it into its rephrasings: no model
    that runs here writes one on demand. Answers each request with its problem's solution and the number."""

    def __init__(self, solutions: dict[str, str]) -> None:
        self.solutions = solutions

    def generate(self, requests: list[str], settings) -> list:  # noqa: ANN001
        from flywheel_dagster.engines.base import Completion

        text = "Ask Mr. Quondt on 415-555-0132 if unsure. {}"
        return [
            Completion(i, 0, text.format(next(s for p, s in self.solutions.items() if r.startswith(p))), 9, 0.0, "stop")
            for i, r in enumerate(requests)
        ]


def test_rephrasings_and_reference_answers_are_redacted_before_training():
    """The deployed model's rephrasings and the reference answers the on-policy prompts carry (a client's
    metadata) reach the training set only redacted, counted by where they came from; the training set's gate
    finds nothing in any of its text columns."""
    from flywheel_dagster.curation import pii
    from flywheel_dagster.records import TrainingSet
    from flywheel_dagster.tasks.gsm8k import GSM8KTask

    gsm = GSM8KTask()
    problems = gsm.traffic(0, 10)
    wrong = [(p, p.solution[: p.solution.rindex("####")] + "#### 987654") for p in problems[5:]]
    rows = [(p, p.solution) for p in problems[:5]] + wrong
    harvested = harvest(_traces(gsm, rows), gsm, _cfg(dedup={"exact": False, "near_duplicates": False})).harvested
    unsolved = {p.prompt for p in problems[5:]}
    refs = [
        "Tel. 415-555-0142" if p in unsolved else r
        for p, r in zip(
            harvested.column("prompt").to_pylist(), harvested.column("reference_answer").to_pylist(), strict=True
        )
    ]
    harvested = harvested.set_column(
        harvested.schema.get_field_index("reference_answer"), "reference_answer", pa.array(refs)
    )
    cfg = _cfg(anchor_fraction=0.0, reformat={"rephrase": 1})
    engine = _MemorisingEngine({p.prompt: p.solution for p in problems})
    result = build_training_dataset(harvested, [], cfg, gsm, engine=engine, seed=1)
    assert result.composition["strategy/rephrased"] == 5
    assert (
        result.composition["rephrased_pii_redacted/PHONE"] == 5
        and result.composition["rephrased_pii_redacted/PERSON"] == 5
    )
    assert all(c.startswith("Ask Mr. <PERSON> on <PHONE>") for c in result.table.column("completion").to_pylist())
    # A reference that held PII is no reward target ("<PHONE>" is never earned): its prompt trains no on-policy
    # method, counted; the solved prompts stay.
    by_prompt = {r["prompt"]: r for r in result.prompts.to_pylist()}
    assert not unsolved & set(by_prompt) and len(by_prompt) == 5
    assert result.composition["reference_pii_redacted/PHONE"] == 5
    assert result.composition["prompts_reference_redacted"] == 5
    tables = {
        TrainingSet.EXAMPLES: result.table,
        TrainingSet.PAIRS: result.pairs,
        TrainingSet.PROMPTS: result.prompts,
    }
    for name, columns in TrainingSet.TEXT_COLUMNS.items():
        assert sum(pii.count_detections(tables[name].column(c)).total() for c in columns) == 0, name


def test_what_one_text_of_a_trace_names_is_redacted_in_all_of_them():
    """A value a cue finds in the question (an SSN, a self-introduced name, an email) and the answer repeats
    without the cue, in another format or case, goes from the answer too; a trace without PII is untouched."""
    import dataclasses

    from flywheel_dagster.tasks.gsm8k import GSM8KTask

    gsm = GSM8KTask()
    p, q, r = gsm.traffic(0, 3)
    asked = dataclasses.replace(p, prompt="My SSN is 219-09-9999 and my name is Xavrel\xa0Quondt. " + p.prompt)
    told = "Noting \uff12\uff11\uff19099999 (219 09 9999) for Xavrel  Quondt.\n" + p.solution
    named = dataclasses.replace(r, prompt="My name is Grant. " + r.prompt)
    traces = _traces(gsm, [(asked, told), (q, q.solution), (named, "The Grant is 7.\n" + r.solution)])
    at = traces.schema.get_field_index("reference_answer")
    traces = traces.set_column(at, "reference_answer", pa.array(["219099999", q.reference, r.reference]))
    rows = harvest(traces, gsm, _cfg()).harvested.to_pylist()
    assert rows[0]["prompt"].startswith("My SSN is <SSN> and my name is <PERSON>. ")
    assert rows[0]["completion"].startswith("Noting <SSN> (<SSN>) for <PERSON>.\n")
    assert "9999" not in rows[0]["reasoning"] + rows[0]["completion"] and "Quondt" not in rows[0]["reasoning"]
    assert rows[0]["reference_answer"] == "<SSN>"  # a client's reference: the on-policy prompts' reward target
    assert set(rows[0]["pii_types"].split(",")) == {"SSN", "PERSON"}
    assert (rows[1]["prompt"], rows[1]["completion"], rows[1]["pii_types"]) == (q.prompt, q.solution, None)
    # Followed numbers stay out of longer numbers and arithmetic; followed names match in any case.
    (asked2,) = gsm.traffic(5, 1)
    asked2 = dataclasses.replace(asked2, prompt="My SSN is 219-09-9999 and I am Xavrel Quondt. " + asked2.prompt)
    told2 = "XAVREL QUONDT: 1,219,099,999 + 219 - 09 - 9999 = 7.\n" + asked2.solution
    (row,) = harvest(_traces(gsm, [(asked2, told2)]), gsm, _cfg()).harvested.to_pylist()
    assert row["completion"].startswith("<PERSON>: 1,219,099,999 + 219 - 09 - 9999 = 7.\n")
    # A one-word name is redacted where its cue is, and not followed: "Grant" is also a word.
    assert rows[2]["prompt"].startswith("My name is <PERSON>. ") and rows[2]["completion"].startswith("The Grant is 7.")


def test_a_value_the_requests_other_turns_name_is_redacted_where_the_trace_repeats_it(tmp_path, monkeypatch):
    """Earlier turns (and a system prompt, tool calls) are no part of the trace, but a value a cue names there (a
    name, a phone number) and the answer repeats without the cue goes from the trace, from a gateway log through
    the ingest and the harvest. The trace keeps the values found there, not the turns' text, and the harvested
    table neither. The same trace without them (as traced before the ingest kept them) keeps its text: nothing
    in it is a cue."""
    from flywheel_dagster.curation import ingest, loggen, pii
    from flywheel_dagster.tasks.gsm8k import GSM8KTask
    from flywheel_dagster.traces.schema import CONTEXT_PII, context_pii_pairs

    gsm = GSM8KTask()
    (p,) = gsm.traffic(0, 1)
    when = datetime(2026, 2, 3, tzinfo=UTC)
    told = "Account 0612345678 of Xavrel Quondt is active.\n" + p.solution
    record = loggen.record(p.prompt, told, timestamp=when, system="You are a support agent.", request_id="r-1")
    call = {"type": "function", "function": {"name": "find_account", "arguments": '{"phone": "0612345678"}'}}
    record["request"]["messages"][1:1] = [
        {"role": "user", "content": [{"type": "text", "text": "My name is Xavrel Quondt. Is my account active?"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c-1", **call}]},
        {"role": "tool", "tool_call_id": "c-1", "content": '{"status": "active"}'},
    ]
    others = [  # requests with a system prompt alone, one with none
        loggen.record(
            q.prompt, q.solution, timestamp=when, system=f"Tutor {k}. Tel.: 06 12 34 56 7{k}", request_id=f"o{k}"
        )
        for k, q in enumerate(gsm.traffic(1, 3))
    ]
    others.append(loggen.record(p.prompt, p.solution, timestamp=when, request_id="plain"))
    log = tmp_path / "gateway.jsonl"
    loggen.write_jsonl(log, [record, *others])
    settings = ingest.Settings("2026-01-01", ingest.Window(datetime(2026, 1, 1, tzinfo=UTC), when.replace(month=4)))
    ((traces, _),) = ingest.Ingestor(gsm, settings).tables([str(log)])
    # Searched a batch at a time, or every few records when their other turns are long: the same.
    monkeypatch.setattr(ingest.ingestor, "CONTEXT_CHARS", 40)
    assert traces.equals(next(ingest.Ingestor(gsm, settings).tables([str(log)]))[0])
    cells = traces.column(CONTEXT_PII).to_pylist()
    assert [context_pii_pairs(c) for c in cells[1:]] == [[("PHONE", f"06 12 34 56 7{k}")] for k in range(3)] + [[]]
    traces = traces.slice(0, 1)
    (cell,) = traces.column(CONTEXT_PII).to_pylist()
    assert sorted(context_pii_pairs(cell)) == [("PERSON", "Xavrel Quondt"), ("PHONE", "0612345678")]
    (row,) = harvest(traces, gsm, _cfg()).harvested.to_pylist()
    assert row["completion"] == "Account <PHONE> of <PERSON> is active.\n" + p.solution
    assert "0612345678" not in row["reasoning"] and row["pii_types"] == "PERSON,PHONE"
    assert CONTEXT_PII not in row
    (bare,) = harvest(traces.drop_columns([CONTEXT_PII]), gsm, _cfg()).harvested.to_pylist()
    assert (bare["completion"], bare["pii_types"]) == (told, None)
    # With names not redacted, a name the other turns give is not followed either.
    (unnamed,) = harvest(traces, gsm, _cfg(redact_names=False)).harvested.to_pylist()
    assert unnamed["completion"] == "Account <PHONE> of Xavrel Quondt is active.\n" + p.solution
    # A pair that is not what a detector reports (a Parquet input's, say) is not followed: "-" as an IBAN would
    # take every gap between two words; an email or an address is followed as a whole word.
    odd = [("ADDRESS", "a"), ("ADDRESS", "Hello"), ("ADDRESS", "1"), ("EMAIL", " "), ("EMAIL", "@"), ("PHONE", "")]
    assert pii.known_values([*odd, ("IBAN", "-"), ("IBAN", "12"), ("FOO", "x")]) == []
    # An address is followed as a whole, also beside text without spaces; a name in any case, "İ" included.
    known = pii.known_values([("ADDRESS", "Via 55"), ("PERSON", "Aida Quondt")])
    told = "Via 555, Via 55. 我住在Via 55号. AİDA QUONDT"
    assert pii.redact_known(told, known)[0] == "Via 555, <ADDRESS>. 我住在<ADDRESS>号. <PERSON>"
