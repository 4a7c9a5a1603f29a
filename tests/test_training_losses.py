"""The distillation objectives on small tensors with exact numbers, and wired into their TRL trainers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from flywheel_dagster.base_models import build_playground_model
from flywheel_dagster.config import ModelConfig
from flywheel_dagster.tasks.playground import ALPHABET, PlaygroundTask
from flywheel_dagster.training import trl_hooks
from flywheel_dagster.training.grpo import _grpo_trainer_class, correctness_reward, format_reward
from flywheel_dagster.training.opsd import _opsd_trainer_class, clipped_forward_kl, teacher_prompt
from flywheel_dagster.training.redi import _redi_trainer_class, redi_loss
from flywheel_dagster.training.settings import GrpoSettings, OpsdSettings, RediSettings, TrainSettings


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained playground Llama: enough for the trainers' data paths; numbers come from its forward."""
    cfg = ModelConfig(kind="playground-tiny", hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    return build_playground_model(cfg, ALPHABET, tmp_path_factory.mktemp("tiny") / "model", seed=0)


# ---- REDI -----------------------------------------------------------------------------------------


def test_redi_loss_equals_the_formula_on_hand_made_log_probabilities():
    # Two pairs. Pair 1: y+ has 2 tokens (log-probs -1, -2; one pad), y- has 3 (-3, -1, -2).
    # Pair 2: y+ 1 token (-0.5), y- 2 tokens (-4, -2).
    chosen = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]])
    chosen_mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    rejected = torch.tensor([[-3.0, -1.0, -2.0], [-4.0, -2.0, -9.0]])
    rejected_mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    loss, pos, neg = redi_loss(chosen, chosen_mask, rejected, rejected_mask, alpha=0.8)
    # pair 1: -(-3/2) + 0.8 * (-6/3) = 1.5 - 1.6 = -0.1; pair 2: -(-0.5) + 0.8 * (-6/2) = 0.5 - 2.4 = -1.9
    assert loss.item() == pytest.approx((-0.1 + -1.9) / 2)
    assert pos.item() == pytest.approx((-1.5 + -0.5) / 2)
    assert neg.item() == pytest.approx((-2.0 + -3.0) / 2)


def test_redi_negative_term_has_weight_alpha():
    chosen = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    rejected = torch.tensor([[-3.0, -1.0, -2.0, -1.0]], requires_grad=True)
    loss, _, _ = redi_loss(chosen, torch.ones(1, 2), rejected, torch.ones(1, 4), alpha=0.8)
    loss.backward()
    # dL/dlogp(y+_t) = -1/|y+|; dL/dlogp(y-_t) = +alpha/|y-|
    assert torch.allclose(chosen.grad, torch.full((1, 2), -1 / 2))
    assert torch.allclose(rejected.grad, torch.full((1, 4), 0.8 / 4))


def test_redi_trainer_computes_the_formula_from_the_model(tiny_model, tmp_path):
    """The REDI trainer's loss on a collated batch = the formula on log-probs from a plain forward pass."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig

    from flywheel_dagster.training.common import dataset

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    pairs = [
        {"prompt": "Q:12+3\n", "chosen": "2+3=5:5;1+0=1:15\nA:15", "rejected": "2+3=6:6\nA:16"},
        {"prompt": "Q:7-2\n", "chosen": "7-2=5:5\nA:5", "rejected": "7-2=4:4;0-0=0:04\nA:4"},
    ]
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", precompute_ref_log_probs=True)
    trainer = _redi_trainer_class()(
        model=model, args=args, train_dataset=dataset(pairs), processing_class=tok, alpha=0.8
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    model.eval()
    with torch.no_grad():
        got = trainer.compute_loss(trainer.model, batch)
        # by hand: log p of each completion token under a plain forward, averaged per completion
        expected = []
        for p in pairs:
            terms = []
            for key, sign in (("chosen", -1.0), ("rejected", 0.8)):
                ids = tok(p["prompt"] + p[key])["input_ids"]
                n_prompt = len(tok(p["prompt"])["input_ids"])
                ids = ids + [tok.eos_token_id] if ids[-1] != tok.eos_token_id else ids
                logits = model(torch.tensor([ids])).logits[0, :-1]
                lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
                completion = lp[n_prompt - 1 :]
                terms.append(sign * completion.mean().item())
            expected.append(sum(terms))
    assert got.item() == pytest.approx(sum(expected) / 2, rel=1e-4)


# ---- OPSD -----------------------------------------------------------------------------------------


def test_opsd_loss_is_the_hand_computed_capped_forward_kl():
    # One sequence, two tokens, vocabulary of 3, probabilities chosen to make the logs simple.
    p_t = torch.tensor([[[0.5, 0.25, 0.25], [0.8, 0.1, 0.1]]])
    p_s = torch.tensor([[[0.25, 0.5, 0.25], [0.7, 0.2, 0.1]]])
    teacher_logits = p_t.log()
    student_logits = p_s.log().requires_grad_(True)
    mask = torch.ones(1, 2)
    # KL per token: 0.5 ln 2 + 0.25 ln 0.5 + 0 = 0.1733 (over the cap: counts 0.05); 0.8 ln(8/7) + 0.1 ln 0.5
    kl1 = 0.5 * math.log(2) + 0.25 * math.log(0.5)
    kl2 = 0.8 * math.log(0.8 / 0.7) + 0.1 * math.log(0.1 / 0.2)
    assert kl1 > 0.05 > kl2 > 0
    loss, kl = clipped_forward_kl(student_logits, teacher_logits, mask, clip=0.05)
    assert loss.item() == pytest.approx((0.05 + kl2) / 2, abs=1e-6)
    assert kl.item() == pytest.approx((kl1 + kl2) / 2, abs=1e-6)
    # the capped token keeps its gradient's direction (toward the teacher), scaled by clip / KL
    loss.backward()
    softmax_grad = p_s - p_t  # d KL / d student logits, per token
    assert torch.allclose(student_logits.grad[0, 0], softmax_grad[0, 0] * (0.05 / kl1) / 2, atol=1e-6)
    assert torch.allclose(student_logits.grad[0, 1], softmax_grad[0, 1] / 2, atol=1e-6)
    uncapped, _ = clipped_forward_kl(p_s.log(), teacher_logits, mask, clip=None)
    assert uncapped.item() == pytest.approx((kl1 + kl2) / 2, abs=1e-6)
    # masked tokens do not count
    loss_one, _ = clipped_forward_kl(p_s.log(), teacher_logits, torch.tensor([[0.0, 1.0]]), clip=0.05)
    assert loss_one.item() == pytest.approx(kl2, abs=1e-6)


def test_opsd_kl_profile_says_how_much_the_cap_removes():
    """Per-token KLs 0.2, 0.03, 0.01 and a masked 5.0; clip 0.05: one token of three over the cap, which removes
    0.15 of the 0.24 the three carry."""
    from flywheel_dagster.training.opsd import kl_profile

    per_token = torch.tensor([[0.2, 0.03, 0.01, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    profile = kl_profile(per_token, mask, clip=0.05)
    assert profile["capped_share"] == pytest.approx(1 / 3)
    assert profile["kl_removed_share"] == pytest.approx(0.15 / 0.24)
    assert profile["kl_p50"] == pytest.approx(0.03) and profile["kl_max"] == pytest.approx(0.2)
    assert kl_profile(per_token, mask, clip=None)["kl_removed_share"] == 0.0
    assert kl_profile(per_token, torch.zeros(1, 4), clip=0.05) == {}


def test_mixed_prompts_keep_what_the_champion_both_solved_and_failed():
    """on_policy.prompts: mixed keeps the train-split prompts with 0 < solved < samples in the quarter's traffic."""
    import pyarrow as pa

    from flywheel_dagster.training.candidate import on_policy_prompts

    table = pa.table(
        {
            "prompt": ["always", "never", "sometimes", "held out", "once"],
            "reference": ["1", "2", "3", "4", "5"],
            "solution": ["s1", "s2", "s3", "s4", "s5"],
            "solved": [4, 0, 2, 2, 1],
            "samples": [4, 4, 4, 4, 4],
            "split": ["train", "train", "train", "validation", "train"],
        }
    )
    assert [r["prompt"] for r in on_policy_prompts(table, None)] == ["always", "never", "sometimes", "once"]
    assert [r["prompt"] for r in on_policy_prompts(table, None, "mixed")] == ["sometimes", "once"]
    assert len(on_policy_prompts(table, 1, "mixed")) == 1


def test_opsd_teacher_gets_no_gradient():
    teacher = torch.randn(2, 3, 5, requires_grad=True)
    student = torch.randn(2, 3, 5, requires_grad=True)
    loss, _ = clipped_forward_kl(student, teacher, torch.ones(2, 3), clip=0.05)
    loss.backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_opsd_teacher_sees_the_solution_and_the_student_does_not(tiny_model, tmp_path):
    """Through the trainer: the student's rollout prompt is the bare question; the teacher's input holds the
    reference solution followed by the student's own tokens, and its logits carry no gradient."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.sdft import SDFTConfig

    from flywheel_dagster.training.common import dataset

    task = PlaygroundTask()
    problem = task.lookup("805+59")
    tok = AutoTokenizer.from_pretrained(tiny_model)
    args = SDFTConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=8,
        teacher_model_kind="base",
        distillation_mode="full_logits",
        distillation_alpha=0.0,
        distillation_is_clip=None,
        teacher_prompt_template=task.teacher_template,
    )
    rows = [{"prompt": problem.prompt, "privileged_context": problem.solution}]
    trainer = _opsd_trainer_class()(
        model=AutoModelForCausalLM.from_pretrained(tiny_model),
        args=args,
        train_dataset=dataset(rows),
        processing_class=tok,
        clip=0.05,
    )
    trainer.model.train()
    batch = trainer._prepare_training_batch([rows[0], rows[0]])
    student_prompt = tok.decode(batch["prompt_ids"][0], skip_special_tokens=True)
    teacher_input = tok.decode(batch["teacher_input_ids"][0], skip_special_tokens=True)
    completion = tok.decode(batch["completion_ids"][0], skip_special_tokens=True)
    assert problem.solution not in student_prompt and student_prompt == problem.prompt
    expected_teacher_prompt = teacher_prompt(task.teacher_template, problem.prompt, problem.solution)
    assert problem.solution in expected_teacher_prompt
    assert teacher_input == expected_teacher_prompt + completion
    assert trainer.tokens_generated == int(batch["raw_completion_lengths"].sum()) > 0
    logits = trainer._compute_teacher_student_logits(trainer.model, trainer.teacher_model, batch)
    assert logits.student_logits.requires_grad and not logits.teacher_logits.requires_grad


# ---- GRPO -----------------------------------------------------------------------------------------


def test_grpo_reward_is_the_verifier_output():
    task = PlaygroundTask()
    problem = task.lookup("805+59")
    completions = [
        problem.solution,  # the worked solution: correct
        "5+9=14:4;0+5+1=6:64;8+0=8:864\nA:865",  # wrong final answer
        "5+9=15:5\nA:864",  # right answer, wrong step: the verifier rejects it
        "5+9=14:4",  # no final answer
    ]
    references = [problem.reference] * 4
    rewards = correctness_reward(task)(completions=completions, reference=references)
    assert rewards == [1.0 if task.verify(c, r).correct else 0.0 for c, r in zip(completions, references, strict=True)]
    assert rewards == [1.0, 0.0, 0.0, 0.0]
    assert format_reward(task)(completions=completions) == [1.0, 1.0, 1.0, 0.0]


def test_training_settings_reject_an_unknown_method():
    with pytest.raises(ValueError, match="training method 'ppo'.*expected one of"):
        TrainSettings(method="ppo", learning_rate=1e-4, epochs=1, batch_size=2, max_length=32)


def test_training_settings_flatten_to_the_prefixed_keys():
    settings = TrainSettings(
        method="redi",
        learning_rate=1e-4,
        epochs=1,
        batch_size=2,
        max_length=32,
        redi=RediSettings(alpha=0.7),
        opsd=OpsdSettings(clip=None),
        grpo=GrpoSettings(format_reward=0.5),
    )
    flat = settings.as_dict()
    assert list(flat) == [
        "method", "learning_rate", "epochs", "batch_size", "max_length", "max_steps", "seed", "warmup_ratio",
        "device", "checkpoint_every", "sharding", "lora", "redi_alpha", "redi_learning_rate", "redi_epochs",
        "num_generations", "max_new_tokens", "temperature", "opsd_clip", "grpo_beta", "grpo_format_reward",
    ]  # fmt: skip
    assert flat["redi_alpha"] == 0.7 and flat["opsd_clip"] is None and flat["grpo_format_reward"] == 0.5


# ---- the private TRL methods the trainers override ------------------------------------------------


def test_the_private_trl_hooks_are_there_with_their_parameters():
    """Fails on a TRL upgrade that renames or reshapes a private method a trainer overrides (an override TRL no
    longer calls would silently train with TRL's objective): trl_hooks.HOOKS lists them, and why."""
    assert not trl_hooks.problems(), "\n".join(trl_hooks.problems())


def test_every_private_override_is_a_listed_hook():
    listed = {(h.owner, h.method) for h in trl_hooks.HOOKS}
    for build in (_redi_trainer_class, _opsd_trainer_class, _grpo_trainer_class):
        trainer = build()
        trl_base = next(c for c in trainer.__mro__[1:] if c.__module__.startswith("trl."))
        for name in trl_hooks.overrides(trainer):
            assert (trl_base.__name__, name) in listed, f"{trainer.__name__}.{name} overrides a private TRL method"


def test_a_changed_hook_fails_naming_the_trl_version_and_the_hook():
    import trl

    gone = trl_hooks.Hook("trl", "DPOTrainer", "_no_such_method", ("self",), "a test")
    reshaped = trl_hooks.Hook("trl", "DPOTrainer", "_precompute_ref_logps", ("self", "dataset"), "a test")
    found = trl_hooks.problems((gone, reshaped))
    assert found[0].startswith(f"TRL {trl.__version__}: trl.DPOTrainer._no_such_method is gone")
    assert f"TRL {trl.__version__}: trl.DPOTrainer._precompute_ref_logps takes" in found[1]
