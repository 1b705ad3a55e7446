"""PanaceaTrainer on tiny_causal_lm(): the step against the literal reference, ε, passes, clamp, final ε, metrics."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import DataCollatorForLanguageModeling, GPT2Config, GPT2LMHeadModel, TrainerCallback

from paperpack.panacea import PanaceaTrainer, global_norm
from paperpack.panacea._reference import objective, reference_step

from .conftest import trainable_state


class CaptureGradients(TrainerCallback):
    """Records the gradient the optimizer is about to apply, and ε, at every step."""

    def __init__(self) -> None:
        self.trainer: PanaceaTrainer | None = None
        self.gradients: list[dict[str, torch.Tensor]] = []
        self.epsilons: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        assert self.trainer is not None
        params = self.trainer.model.named_parameters()
        self.gradients.append({name: p.grad.detach().clone() for name, p in params if p.grad is not None})
        self.epsilons.append(self.trainer.perturbation or {})


def _train(
    model: torch.nn.Module,
    args: Any,
    task: Any,
    harmful: Any,
    collator: Any,
    *,
    callbacks: list[TrainerCallback] | None = None,
) -> tuple[PanaceaTrainer, CaptureGradients]:
    capture = CaptureGradients()
    trainer = PanaceaTrainer(
        model=model,
        args=args,
        train_dataset=task,
        harmful_dataset=harmful,
        data_collator=collator,
        callbacks=[capture, *(callbacks or [])],
    )
    capture.trainer = trainer
    trainer.train()
    return trainer, capture


def _assert_close(
    actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], **tolerance: float
) -> None:
    assert set(actual) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, msg=lambda m, n=name: f"{n}: {m}", **tolerance)


# One full batch each: 4 task and 4 harmful examples, so the step's batches are known exactly.
_FULL_BATCH = {
    "per_device_train_batch_size": 4,
    "harmful_batch_size": 4,
    "max_grad_norm": 0.0,
    "max_steps": 1,
}


def test_combined_gradient_equals_g_minus_lambda_h1_minus_h0(
    fresh_model, make_args, task_data, harmful_data, collator
) -> None:
    model = fresh_model()
    expected = reference_step(
        model, collator(task_data[:4]), collator(harmful_data[:4]), rho=1.0, lam=0.5, clamp=None
    )
    args = make_args(harmful_loss_clamp=None, final_perturbation="none", **_FULL_BATCH)
    trainer, capture = _train(model, args, task_data[:4], harmful_data[:4], collator)
    _assert_close(capture.gradients[0], expected.gradient, rtol=1e-4, atol=1e-6)
    _assert_close(capture.epsilons[0], expected.epsilon, rtol=1e-4, atol=1e-7)
    # The three parts are not trivially related: λ(h1 − h0) is neither zero nor all of the gradient.
    assert global_norm(expected.h1[n] - expected.h0[n] for n in expected.h0) > 1e-3
    logged = trainer.state.log_history[0]
    assert logged["loss"] == pytest.approx(expected.task_loss, rel=1e-5)
    assert logged["harmful_loss"] == pytest.approx(expected.harmful_loss, rel=1e-5)
    assert logged["harmful_loss_perturbed"] == pytest.approx(expected.harmful_loss_perturbed, rel=1e-5)
    assert logged["perturbation_norm"] == pytest.approx(1.0, rel=1e-6)
    assert logged["harmful_loss_clamped"] == 0.0


def _gpt2(tokenizer: Any, **overrides: Any) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **overrides,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return GPT2LMHeadModel(config)


def test_gradient_matches_finite_differences(make_args, task_data, harmful_data, collator, tiny_lm) -> None:
    """⟨G, v⟩ = dJ/dt (w + t v) at t = 0 for J = g − λ(h(w+ε) − h(w)), ε fixed, on a float64 GPT-2.

    GPT-2 runs wholly in float64 (Llama's RMSNorm computes in float32), so the central difference is exact to
    about 1e-9 here; the trainer's gradient goes through transformers' loss, which casts logits to float32.
    """
    model = _gpt2(tiny_lm[1], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0).double()
    # transformers derives loss_type from the class name, which for GPT2LMHeadModel matches nothing; the Trainer
    # then counts the unshifted labels in num_items_in_batch (one token per row too many), for any trainer.
    model.loss_type = "ForCausalLM"
    args = make_args(harmful_loss_clamp=None, final_perturbation="none", **_FULL_BATCH)
    task, harmful = collator(task_data[:4]), collator(harmful_data[:4])
    weights = trainable_state(model)
    _, capture = _train(model, args, task_data[:4], harmful_data[:4], collator)
    gradient, epsilon = capture.gradients[0], capture.epsilons[0]
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        direction = {
            n: torch.randn(w.shape, generator=generator, dtype=torch.float64) for n, w in weights.items()
        }

        def value(t: float, d: dict[str, torch.Tensor] = direction) -> float:
            moved = {n: w + t * d[n] for n, w in weights.items()}
            with torch.no_grad():
                return float(objective(model, moved, epsilon, task, harmful, lam=0.5, clamp=None))

        estimate = (value(1e-6) - value(-1e-6)) / 2e-6
        analytic = sum(float((gradient[n] * direction[n]).sum()) for n in weights)
        assert analytic == pytest.approx(estimate, rel=1e-5)


# Pass 2 in one piece, in two (the default for full fine-tuning), and in two with the clamp on but not reached
# (decided first by a no-grad forward of the first piece); 3 pieces of 4 rows are uneven (1, 1, 2).
_PASS_2 = [
    {"perturbed_pass_pieces": 1, "harmful_loss_clamp": None},
    {"perturbed_pass_pieces": 2, "harmful_loss_clamp": None},
    {"perturbed_pass_pieces": 2, "harmful_loss_clamp": 100.0},
    {"perturbed_pass_pieces": 3, "harmful_loss_clamp": 100.0},
]


@pytest.mark.parametrize("pass_2", _PASS_2, ids=["one-piece", "halves", "halves-clamp-on", "thirds-clamp-on"])
def test_sgd_step_equals_the_reference_step(
    pass_2: dict[str, Any], fresh_model, make_args, task_data, *, harmful_data, collator
) -> None:
    """w_1 = w_0 − η·G, then the last step's ε is added (final_perturbation="last_step")."""
    model = fresh_model()
    before = trainable_state(model)
    expected = reference_step(
        model, collator(task_data[:4]), collator(harmful_data[:4]), rho=0.5, lam=0.5, clamp=None
    )
    args = make_args(optim="sgd", learning_rate=0.1, panacea_rho=0.5, **pass_2, **_FULL_BATCH)
    trainer, _ = _train(model, args, task_data[:4], harmful_data[:4], collator)
    assert trainer.perturbed_pass_pieces == pass_2["perturbed_pass_pieces"]
    assert trainer.state.log_history[0]["harmful_loss_perturbed"] == pytest.approx(
        expected.harmful_loss_perturbed, rel=1e-5
    )
    after = {n: before[n] - 0.1 * expected.gradient[n] + expected.epsilon[n] for n in before}
    _assert_close(trainable_state(model), after, rtol=1e-5, atol=1e-6)
    assert trainer.applied_perturbation is not None
    _assert_close(trainer.applied_perturbation, expected.epsilon, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("pieces", [1, 2])
def test_clamp_drops_h1_when_the_perturbed_harmful_loss_exceeds_it(
    pieces: int, fresh_model, make_args, task_data, *, harmful_data, collator
) -> None:
    model = fresh_model()
    expected = reference_step(
        model, collator(task_data[:4]), collator(harmful_data[:4]), rho=1.0, lam=0.5, clamp=1.0
    )
    assert expected.harmful_loss_perturbed > 1.0  # the clamp is active: h1 = 0, G = g + λh0
    _assert_close(expected.gradient, {n: expected.g[n] + 0.5 * expected.h0[n] for n in expected.g})
    args = make_args(
        harmful_loss_clamp=1.0, final_perturbation="none", perturbed_pass_pieces=pieces, **_FULL_BATCH
    )
    trainer, capture = _train(model, args, task_data[:4], harmful_data[:4], collator)
    _assert_close(capture.gradients[0], expected.gradient, rtol=1e-4, atol=1e-6)
    logged = trainer.state.log_history[0]
    assert logged["harmful_loss_clamped"] == 1.0
    # Decided on the whole batch's mean loss at w+ε, also when pass 2 runs in halves.
    assert logged["harmful_loss_perturbed"] == pytest.approx(expected.harmful_loss_perturbed, rel=1e-5)


def test_one_piece_and_halves_train_the_same_weights(
    fresh_model, make_args, task_data, harmful_data, collator
) -> None:
    """Adam, 3 steps, the clamp on (and, at this λ, reached on no step): pass 2 in halves changes only rounding."""
    models = {}
    for pieces in (1, 2):
        models[pieces] = fresh_model()
        args = make_args(
            f"pieces{pieces}", max_steps=3, harmful_loss_clamp=100.0, perturbed_pass_pieces=pieces
        )
        trainer, _ = _train(models[pieces], args, task_data, harmful_data, collator)
        assert all(entry["harmful_loss_clamped"] == 0.0 for entry in trainer.state.log_history[:3])
    _assert_close(trainable_state(models[2]), trainable_state(models[1]), rtol=1e-5, atol=1e-6)


def test_the_clamp_decision_replays_the_dropout_of_each_piece(
    make_args, task_data, harmful_data, tiny_lm
) -> None:
    """GPT-2 with dropout 0.1: deciding the clamp first (a no-grad forward of the first half, its random state
    restored before its forward with gradients) gives the weights of pass 2 run without a clamp, up to the
    rounding of adding the halves' gradients in the other order (SGD; without the replay the weights differ by up to 3e-2)."""
    tokenizer = tiny_lm[1]
    weights = []
    for clamp in (None, 100.0):
        model = _gpt2(tokenizer)
        model.loss_type = "ForCausalLM"
        args = make_args(
            f"clamp{clamp}",
            max_steps=2,
            optim="sgd",
            learning_rate=0.1,
            harmful_loss_clamp=clamp,
            perturbed_pass_pieces=2,
        )
        _train(model, args, task_data, harmful_data, DataCollatorForLanguageModeling(tokenizer, mlm=False))
        weights.append(trainable_state(model))
    _assert_close(weights[1], weights[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("settings", "passes", "backward_passes", "no_grad_rows"),
    [
        ({"perturbed_pass_pieces": 1, "harmful_loss_clamp": None}, 3, 3, 0),
        ({"perturbed_pass_pieces": 2, "harmful_loss_clamp": None}, 3, 3, 0),
        # The clamp decided first: the first half of the harmful batch (2 rows) is also run without gradients.
        ({"perturbed_pass_pieces": 2, "harmful_loss_clamp": 100.0}, 3, 3, 2),
        # h(w+ε) above the clamp on every step (the tiny model's loss is about 6.9 there): h1 = 0, and pass 2
        # stops after its forward.
        ({"perturbed_pass_pieces": 1, "harmful_loss_clamp": 1.0}, 3, 2, 0),
        ({"panacea_lambda": 0.0}, 2, 2, 0),
    ],
    ids=["one-piece", "halves", "halves-clamp-on", "clamped", "lambda-0"],
)
def test_forward_backward_passes_per_step(
    settings: dict[str, Any],
    *,
    passes: int,
    backward_passes: int,
    no_grad_rows: int,
    fresh_model,
    make_args,
    task_data,
    harmful_data,
    collator,
) -> None:
    """Counted in rows (batches of 4 task and 4 harmful rows), since pass 2 may run in pieces."""
    model = fresh_model()
    rows = {"forward": 0, "no_grad": 0, "backward": 0}

    def forward(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        rows["forward" if torch.is_grad_enabled() else "no_grad"] += kwargs["input_ids"].shape[0]

    def backward(_module: Any, _grad_input: Any, grad_output: tuple[torch.Tensor, ...]) -> None:
        rows["backward"] += grad_output[0].shape[0]

    model.register_forward_pre_hook(forward, with_kwargs=True)
    model.lm_head.register_full_backward_hook(backward)
    _train(model, make_args(max_steps=3, **settings), task_data, harmful_data, collator)
    assert rows == {
        "forward": 3 * 4 * passes,
        "backward": 3 * 4 * backward_passes,
        "no_grad": 3 * no_grad_rows,
    }


def test_epsilon_has_norm_rho_and_touches_only_the_selected_parameters(
    fresh_model, make_args, task_data, harmful_data, collator
) -> None:
    model = fresh_model()
    before = trainable_state(model)
    args = make_args(
        panacea_rho=0.3,
        perturb_parameters=[r"\.mlp\.", r"^lm_head"],
        max_steps=2,
        learning_rate=0.0,
        lr_scheduler_type="constant",
    )
    trainer, capture = _train(model, args, task_data, harmful_data, collator)
    for epsilon in capture.epsilons:
        assert set(epsilon) == {n for n in before if ".mlp." in n or n.startswith("lm_head")}
        assert global_norm(epsilon.values()) == pytest.approx(0.3, rel=1e-6)
    # With η = 0 the only change is the final ε, on the selected parameters only.
    after = trainable_state(model)
    final = trainer.applied_perturbation
    assert final is not None
    for name, weight in after.items():
        if name in final:
            torch.testing.assert_close(weight, before[name] + final[name])
        else:
            assert torch.equal(weight, before[name]), name


def test_perturbation_is_a_copy(fresh_model, make_args, task_data, harmful_data, collator) -> None:
    trainer, _ = _train(
        fresh_model(), make_args(final_perturbation="none"), task_data, harmful_data, collator
    )
    first = trainer.perturbation
    assert first is not None
    kept = {n: t.clone() for n, t in first.items()}
    for tensor in first.values():
        tensor.zero_()
    second = trainer.perturbation
    assert second is not None
    _assert_close(second, kept, rtol=0, atol=0)
    grads = {p.grad.data_ptr() for p in trainer.model.parameters() if p.grad is not None}
    assert not grads & {t.data_ptr() for t in second.values()}
    assert not {t.data_ptr() for t in first.values()} & {t.data_ptr() for t in second.values()}


@pytest.mark.parametrize("rule", ["last_step", "mean", "none"])
def test_final_perturbation_rules(
    rule: str, fresh_model, make_args, task_data, harmful_data, *, collator
) -> None:
    model = fresh_model()
    snapshots: list[dict[str, torch.Tensor]] = []

    class BeforeEnd(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            snapshots.append(trainable_state(kwargs["model"]))

    trainer, capture = _train(
        model,
        make_args(final_perturbation=rule, max_steps=3),
        task_data,
        harmful_data,
        collator,
        callbacks=[BeforeEnd()],
    )
    trained, after = snapshots[-1], trainable_state(model)
    if rule == "none":
        assert trainer.applied_perturbation is None
        _assert_close(after, trained, rtol=0, atol=0)
        return
    names = list(capture.epsilons[-1])
    if rule == "last_step":
        expected = capture.epsilons[-1]
    else:
        expected = {n: sum(eps[n] for eps in capture.epsilons) / len(capture.epsilons) for n in names}
        assert global_norm(expected.values()) < 1.0  # the steps' ε point in different directions
    assert trainer.applied_perturbation is not None
    _assert_close(trainer.applied_perturbation, expected, rtol=1e-5, atol=1e-7)
    _assert_close(after, {n: trained[n] + expected[n] for n in names}, rtol=1e-6, atol=1e-7)


def test_training_lowers_the_task_loss_and_logs_the_metrics(
    fresh_model, make_args, task_data, harmful_data, collator
) -> None:
    args = make_args(max_steps=20, learning_rate=3e-3, lr_scheduler_type="constant")
    trainer, _ = _train(fresh_model(), args, task_data, harmful_data, collator)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 20
    expected_keys = {
        "harmful_loss",
        "harmful_loss_perturbed",
        "perturbation_norm",
        "harmful_grad_norm",
        "harmful_loss_clamped",
    }
    assert all(expected_keys <= set(entry) for entry in logs)
    assert logs[-1]["loss"] < logs[0]["loss"] - 0.5
    assert all(entry["perturbation_norm"] == pytest.approx(1.0, rel=1e-6) for entry in logs)


def test_harmful_batches_cycle_through_the_harmful_set(
    make_args, fresh_model, task_data, harmful_data, collator, *, tiny_lm
) -> None:
    pad = tiny_lm[1].pad_token_id
    seen: list[set[tuple[int, ...]]] = []
    model = fresh_model()

    def record(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        seen.append({tuple(t for t in row if t != pad) for row in kwargs["input_ids"].tolist()})

    model.register_forward_pre_hook(record, with_kwargs=True)
    args = make_args(
        max_steps=4, per_device_train_batch_size=2, perturbed_pass_pieces=1, harmful_loss_clamp=None
    )
    _train(model, args, task_data, harmful_data, collator)
    harmful_rows = {tuple(row["input_ids"]) for row in harmful_data}
    task_rows = {tuple(row["input_ids"]) for row in task_data}
    # Per step: h(w) on a harmful batch, g on a task batch, then h(w+ε) on the same harmful batch.
    for step in range(4):
        assert seen[3 * step] <= harmful_rows
        assert seen[3 * step + 1] <= task_rows
        assert seen[3 * step + 2] == seen[3 * step]
    # 8 examples, 2 per batch: the first epoch (4 steps) visits every harmful example once.
    assert set().union(*(seen[3 * step] for step in range(4))) == harmful_rows
