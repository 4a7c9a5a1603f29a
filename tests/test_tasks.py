import random

import pytest

from flywheel_dagster.base_models import build_char_tokenizer
from flywheel_dagster.tasks.gsm8k import GSM8KTask, load_gsm8k
from flywheel_dagster.tasks.playground import (
    ALPHABET,
    SUITES,
    PlaygroundTask,
    random_problem,
    solve_add,
    solve_mul,
    solve_sub,
)


@pytest.fixture(scope="module")
def task():
    return PlaygroundTask()


def test_solvers_match_python_arithmetic():
    rng = random.Random(1)
    for _ in range(2000):
        a, b, d = rng.randint(0, 99999), rng.randint(0, 99999), rng.randint(0, 9)
        assert solve_add(a, b)[1] == a + b
        assert solve_sub(max(a, b), min(a, b))[1] == max(a, b) - min(a, b)
        assert solve_mul(a, d)[1] == a * d


def test_every_reference_solution_verifies(task):
    rng = random.Random(2)
    for suite in SUITES:
        for _ in range(200):
            p = random_problem(suite, rng)
            assert task.verify(p.solution, p.reference).correct, p


def test_verifier_rejects_wrong_and_malformed(task):
    p = task.traffic(0, 1)[0]
    good = p.solution
    wrong_answer = good[: good.rindex("A:") + 2] + str(int(p.reference) + 1)
    assert task.verify(wrong_answer, p.reference).reason == "wrong_answer"
    assert task.verify("7+5=13:3\nA:" + p.reference, p.reference).reason == "wrong_step"
    assert task.verify("7+5=12:2;banana\nA:" + p.reference, p.reference).reason == "malformed_step"
    for junk in ("", "A:", "\nA:", "12345", "A:12 trailing words", "\x00\x01"):
        v = task.verify(junk, p.reference)
        assert not v.correct, junk
    assert task.verify(good.split("\nA:")[0], p.reference).reason == "no_final_answer"


def test_benchmark_is_held_out_and_fixed(task):
    bench = task.benchmark(80, 20240101)
    assert bench == task.benchmark(80, 20240101)
    assert {p.suite for p in bench} == set(SUITES) and len(bench) == 80 * len(SUITES)
    held = {p.problem_id for p in bench}
    assert not held & {p.problem_id for p in task.traffic(3, 3000)}
    assert not held & {p.problem_id for p in task.anchors(3000, 0)}


def test_traffic_is_deterministic_per_cycle_and_mixed(task):
    assert task.traffic(1, 60) == task.traffic(1, 60)
    assert task.traffic(1, 60) != task.traffic(2, 60)
    assert {p.suite for p in task.traffic(1, 60)} == set(SUITES)
    assert {p.suite for p in task.anchors(60, 0)} == {"add_short", "sub_short", "mul_2x1"}


def test_char_tokenizer_round_trips(task):
    tok = build_char_tokenizer(ALPHABET)
    p = task.traffic(0, 1)[0]
    text = p.prompt + p.solution
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_gsm8k_verifier_accepts_answer_styles():
    t = GSM8KTask()
    assert len(t.benchmark(20, 1)) == 20
    for completion in ("She has 3 apples.\n#### 18", "so \\boxed{18}", "The answer is 18.", "3 + 15 = 18"):
        assert t.verify(completion, "18").correct, completion
    assert not t.verify("#### 17", "18").correct
    assert t.verify("I do not know", "18").reason == "no_final_answer"
    assert t.verify("#### 1,234", "1234").correct


def test_gsm8k_integers_compare_as_math_verify_does():
    """Plain integers skip math-verify: the verdict must be math-verify's own, up to 18 digits, signs, zeros."""
    from math_verify import parse, verify

    from flywheel_dagster.tasks import gsm8k

    rng = random.Random(0)
    pairs = [("0", "0"), ("0", "-0"), ("0", "00"), ("5", "05"), ("-7", "7"), ("1000000", "1000001")]
    for digits in range(1, 19):
        a = rng.randrange(10 ** (digits - 1), 10**digits)
        pairs += [(str(a), str(a)), (str(a), str(a + 1)), (str(a), str(a - 1)), (str(a), f"-{a}")]
        pairs += [(str(a), f"0{a}")] if digits < 18 else []
    for reference, answer in pairs:
        assert gsm8k._INTEGER.fullmatch(reference) and gsm8k._INTEGER.fullmatch(answer)
        want = bool(verify(parse(reference), parse(answer)))
        assert gsm8k._answers_equal(reference, answer) == want, (reference, answer)
    assert not gsm8k._INTEGER.fullmatch("1" * 19)  # longer, or decimals, fractions, text: math-verify decides
    assert GSM8KTask().verify("#### 18.0", "18").correct and not GSM8KTask().verify("#### 18.5", "18").correct


def test_gsm8k_bad_file_names_line(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text('{"question": "q", "answer": "a\\n#### 1"}\n{"question": "no answer"}\n')
    with pytest.raises(ValueError, match=r"train.jsonl:2: expected a JSON object with 'question' and 'answer'"):
        load_gsm8k(f)


def test_arithmetic_task_in_words_checks_answers_and_holds_out_its_benchmark():
    from flywheel_dagster.tasks.arithmetic import SUITES as WORD_SUITES
    from flywheel_dagster.tasks.arithmetic import ArithmeticTask, worked_solution

    t = ArithmeticTask(benchmark_size=50)
    bench = t.benchmark(50, 20240101)
    assert len(bench) == 50 * len(WORD_SUITES) and len({p.problem_id for p in bench}) == len(bench)
    traffic = t.traffic(1, 600)
    assert not {p.problem_id for p in traffic} & {p.problem_id for p in bench}
    assert [p.problem_id for p in traffic] == [p.problem_id for p in t.traffic(1, 600)]
    assert {p.suite for p in traffic} == set(WORD_SUITES)
    for p in traffic + bench:
        assert t.verify(p.solution, p.reference).correct, p
        assert t.lookup(p.prompt.split("\n")[1]) == p  # "What is a plus b?" finds the problem
    assert worked_solution(72, "*", 24) == "72 * 24 = 72 * 20 + 72 * 4 = 1440 + 288 = 1728\n#### 1728"
    # What SmolLM2 writes: "#### n", "The answer is n.", or a last number; anything else is no answer.
    assert t.verify("59 + 63 = 122\n\nThe answer is 122.", "122").correct
    assert t.verify("46 + 27 = 73", "73").correct
    assert t.verify("#### 1,728", "1728").correct
    assert t.verify("59 + 63 = 122\n#### 121", "122").reason == "wrong_answer"
    assert t.verify("I cannot say.", "122").reason == "no_final_answer"
    assert t.lookup("What is 5 plus 3?") is None  # outside every suite's shape
    assert t.format_violation(bench[0].prompt, "1 <|im_start|>user") == "completion contains chat-template tokens"


def test_a_verifier_from_a_package_is_named_with_its_version():
    """A cached benchmark evaluation is keyed by verifier_id: math-verify's verdicts carry its installed version
    and those of the parser and sympy it relies on, the playground's own verifier its name alone (the harvested rows' `verifier` column stays the name)."""
    from importlib import metadata

    from flywheel_dagster.tasks.base import verifier_id

    parser, sympy = metadata.version("latex2sympy2_extended"), metadata.version("sympy")
    want = f"math-verify-{metadata.version('math-verify')}+latex2sympy2_extended-{parser}+sympy-{sympy}"
    assert verifier_id(GSM8KTask()) == want
    assert verifier_id(PlaygroundTask()) == "playground-exact-v1"
