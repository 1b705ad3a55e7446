"""ZOTrainer on tiny_causal_lm(): loss, resume, gradient accumulation, evaluation, PEFT, bad input, DDP."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import HfArgumentParser, TrainerCallback, TrainingArguments

from paperpack.core.errors import ConfigError
from paperpack.core.hf import training_args
from paperpack.core.testing.contracts import (
    assert_parameters_changed,
    assert_state_dicts_equal,
    run_distributed,
    snapshot_parameters,
)
from paperpack.core.testing.resume import check_trainer_resume
from paperpack.tezo import ZOConfig, ZOOptimizer, ZOTrainer, zo_state_bytes
from paperpack.tezo.optim import unwrap_optimizer

HERE = Path(__file__).parent
# As make_args's, with LOZO's lazy interval inside the run.
_TRAINER_SETTINGS: dict[str, Any] = {
    "per_device_train_batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1, "zo_rank": 4, "seed": 0,
    "disable_tqdm": True, "zo_lozo_interval": 2,
}  # fmt: skip


def _loss(model: torch.nn.Module, dataset: Any, collator: Any) -> float:
    model.eval()
    with torch.no_grad():
        return float(model(**collator(list(dataset))).loss)


@pytest.mark.parametrize("method", ["tezo_adam", "mezo_sgd"])
def test_training_lowers_the_loss(
    method: str, fresh_model, make_args, tiny_lm_dataset, tiny_collator
) -> None:
    model = fresh_model()
    before = _loss(model, tiny_lm_dataset, tiny_collator)
    parameters = snapshot_parameters(model)
    args = make_args(zo_method=method, max_steps=30, learning_rate=1e-3)
    trainer = ZOTrainer(model=model, args=args, train_dataset=tiny_lm_dataset, data_collator=tiny_collator)
    trainer.train()
    after = _loss(model, tiny_lm_dataset, tiny_collator)
    # From a random initialisation (loss ≈ ln 512) 30 ZO steps lower the loss by 0.01-0.05; a flipped sign
    # or a broken restore raises it.
    assert after < before - 0.005, (before, after)
    assert_parameters_changed(parameters, model)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 30
    optimizer = unwrap_optimizer(trainer.optimizer)
    assert optimizer.zo_step == 30
    assert zo_state_bytes(trainer) == optimizer.state_bytes() > 0 or method == "mezo_sgd"


@pytest.mark.parametrize("method", ["tezo_adam", "lozo"])
def test_resume_reproduces_the_uninterrupted_run(
    method: str, fresh_model, tiny_lm_dataset, tiny_collator, tmp_path: Path
) -> None:
    """The core's contract: weights, optimizer state (the ZO step counter that fixes the seed sequence, the
    moments), scheduler and global step of a resumed run equal an uninterrupted one's."""

    def make(settings: dict[str, Any], callbacks: list[TrainerCallback]) -> ZOTrainer:
        options = {**_TRAINER_SETTINGS, "zo_method": method, "lr_scheduler_type": "linear", **settings}
        args = training_args(options.pop("output_dir"), cls=ZOConfig, **options)
        return ZOTrainer(
            model=fresh_model(),
            args=args,
            train_dataset=tiny_lm_dataset,
            data_collator=tiny_collator,
            callbacks=callbacks,
        )

    check = check_trainer_resume(make, tmp_path)
    assert unwrap_optimizer(check.resumed.optimizer).zo_step == 6
    assert (check.checkpoint / "optimizer.pt").is_file()


def test_gradient_accumulation_equals_the_doubled_batch(
    fresh_model, make_args, tiny_lm_dataset, tiny_collator
) -> None:
    """Two micro-batches of 4 give the κ of one batch of 8, up to float32 rounding of the losses.

    The models' loss is float32 (transformers upcasts logits to float32), so κ = (ℓ⁺ − ℓ⁻)/(2ρ) carries an
    error of a few ulp(ℓ)/(2ρ) from the summation order; ρ = 1e-2 keeps that near 1e-4, while a wrong
    accumulation (mean instead of sum, a missing 1/k) would be off by a factor of 2.
    """
    kappas: dict[str, list[float]] = {"big": [], "accumulated": []}

    class RecordKappa(TrainerCallback):
        def __init__(self, key: str) -> None:
            self.key = key

        def on_optimizer_step(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
            kappas[self.key].append(unwrap_optimizer(kwargs["optimizer"]).last_kappa)

    big = fresh_model()
    args = make_args("big", per_device_train_batch_size=8, max_steps=3, zo_method="mezo_adam", zo_eps=1e-2)
    ZOTrainer(
        model=big,
        args=args,
        train_dataset=tiny_lm_dataset,
        data_collator=tiny_collator,
        callbacks=[RecordKappa("big")],
    ).train()
    accumulated = fresh_model()
    args = make_args(
        "acc",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=3,
        zo_method="mezo_adam",
        zo_eps=1e-2,
    )
    ZOTrainer(
        model=accumulated,
        args=args,
        train_dataset=tiny_lm_dataset,
        data_collator=tiny_collator,
        callbacks=[RecordKappa("accumulated")],
    ).train()
    assert len(kappas["big"]) == 3
    ulp = torch.finfo(torch.float32).eps * 8  # ulp of a loss in [4, 8)
    assert kappas["accumulated"] == pytest.approx(kappas["big"], abs=4 * ulp / (2 * 1e-2))
    assert_state_dicts_equal(accumulated.state_dict(), big.state_dict(), atol=1e-5, rtol=0)


def test_forward_passes_skip_the_key_value_cache(
    fresh_model, make_args, tiny_lm_dataset, tiny_collator
) -> None:
    # Eval mode does not switch the cache off: a cache would be memory spent on nothing in ZO training.
    model = fresh_model()
    assert model.config.use_cache
    seen: list[Any] = []
    model.register_forward_pre_hook(lambda module, _args: seen.append(module.config.use_cache))
    trainer = ZOTrainer(
        model=model, args=make_args(max_steps=2), train_dataset=tiny_lm_dataset, data_collator=tiny_collator
    )
    trainer.train()
    assert seen == [False] * 4  # two steps, two forward passes each


def test_optimizer_follows_args_changed_before_training(
    fresh_model, make_args, tiny_lm_dataset, tiny_collator
) -> None:
    """The optimizer is built from ``trainer.args`` when training starts (as ``hyperparameter_search`` needs)."""
    args = make_args(max_steps=1, zo_method="tezo_adam", zo_rank=4, lr_scheduler_type="constant")
    trainer = ZOTrainer(
        model=fresh_model(), args=args, train_dataset=tiny_lm_dataset, data_collator=tiny_collator
    )
    trainer.args.learning_rate = 5e-4
    trainer.args.zo_rank = 2
    trainer.train()
    optimizer = unwrap_optimizer(trainer.optimizer)
    assert optimizer.defaults["rank"] == 2
    assert [group["lr"] for group in optimizer.param_groups] == [5e-4, 5e-4]


def test_evaluation_during_training(fresh_model, make_args, tiny_lm_dataset, tiny_collator) -> None:
    args = make_args(max_steps=4, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=8)
    trainer = ZOTrainer(
        model=fresh_model(),
        args=args,
        train_dataset=tiny_lm_dataset,
        eval_dataset=tiny_lm_dataset.select(range(8)),
        data_collator=tiny_collator,
    )
    trainer.train()
    evals = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(evals) == 2
    assert all(torch.isfinite(torch.tensor(evals)))


def test_peft_model_trains_only_the_adapter(fresh_model, make_args, tiny_lm_dataset, tiny_collator) -> None:
    model = get_peft_model(
        fresh_model(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    )
    parameters = snapshot_parameters(model)
    args = make_args(zo_method="tezo_adam", max_steps=3)
    trainer = ZOTrainer(model=model, args=args, train_dataset=tiny_lm_dataset, data_collator=tiny_collator)
    trainer.train()
    optimizer = unwrap_optimizer(trainer.optimizer)
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}
    assert_parameters_changed(parameters, model)  # every adapter parameter, and no frozen one


def test_config_parses_with_hf_argument_parser(tmp_path: Path) -> None:
    (args,) = HfArgumentParser(ZOConfig).parse_args_into_dataclasses(
        [
            "--output_dir", str(tmp_path), "--zo_method", "lozo", "--zo_rank", "2", "--zo_eps", "1e-4",
            "--zo_cache_factors", "false", "--zo_seed", "7", "--use_cpu", "true", "--report_to", "none",
        ]
    )  # fmt: skip
    assert isinstance(args, ZOConfig)
    kwargs = args.optimizer_kwargs()
    assert (kwargs["method"], kwargs["rank"], kwargs["eps"], kwargs["cache_factors"], kwargs["seed"]) == (
        "lozo", 2, 1e-4, False, 7,
    )  # fmt: skip
    assert args.learning_rate == 1e-5
    assert args.max_grad_norm == 0.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"zo_rank": 0}, "`zo_rank` must be >= 1, got 0"),
        ({"zo_eps": 0.0}, "`zo_eps` must be > 0, got 0.0"),
        ({"zo_eps": -1.0}, "`zo_eps` must be > 0, got -1.0"),
        ({"zo_method": "tezo_lion"}, "`zo_method` must be one of 'mezo_sgd', "),
        ({"zo_estimate": "both"}, "`zo_estimate` must be one of 'two_sided', 'one_sided', got 'both'"),
        ({"zo_one_dim": "sparse"}, "`zo_one_dim` must be one of 'dense', 'freeze', got 'sparse'"),
        ({"zo_lozo_interval": 0}, "`zo_lozo_interval` must be >= 1, got 0"),
        ({"gradient_checkpointing": True}, "`gradient_checkpointing` must be False"),
        pytest.param(
            {"activation_checkpointing": True},
            "`activation_checkpointing` must be False",
            marks=pytest.mark.skipif(
                "activation_checkpointing"
                not in {field.name for field in dataclasses.fields(TrainingArguments)},
                reason="this transformers has no activation_checkpointing (gradient_checkpointing only)",
            ),
        ),
        ({"fp16": True}, "`fp16` must be False"),
        ({"fsdp": "full_shard"}, "`fsdp` and `deepspeed` are not supported"),
    ],
)
def test_config_rejects_bad_values(overrides: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        ZOConfig(str(tmp_path), use_cpu=True, report_to="none", **overrides)


def test_trainer_rejects_other_arguments_and_optimizers(fresh_model, make_args, tmp_path: Path) -> None:
    model = fresh_model()
    with pytest.raises(TypeError, match="`args` must be a ZOConfig, got TrainingArguments"):
        ZOTrainer(model=model, args=TrainingArguments(str(tmp_path), use_cpu=True, report_to="none"))
    adam = torch.optim.AdamW(model.parameters())
    with pytest.raises(TypeError, match=r"`optimizers\[0\]` must be a ZOOptimizer, got AdamW"):
        ZOTrainer(model=model, args=make_args(), optimizers=(adam, None))
    with pytest.raises(TypeError, match="must be ZOOptimizer"):
        ZOTrainer(model=model, args=make_args(), optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.1}))


def test_trainer_accepts_a_ready_optimizer(fresh_model, make_args, tiny_lm_dataset, tiny_collator) -> None:
    model = fresh_model()
    optimizer = ZOOptimizer(model.parameters(), method="lozo", lr=1e-4, rank=2)
    trainer = ZOTrainer(
        model=model, args=make_args(max_steps=2), train_dataset=tiny_lm_dataset, data_collator=tiny_collator,
        optimizers=(optimizer, None),
    )  # fmt: skip
    trainer.train()
    assert optimizer.zo_step == 2
    assert unwrap_optimizer(trainer.optimizer) is optimizer


@pytest.mark.slow
def test_ddp_ranks_agree_and_average_kappa(tmp_path: Path) -> None:
    """Two gloo ranks: same seed, κ averaged, so both replicas hold identical weights after every step."""
    run_distributed(HERE / "ddp_script.py", str(tmp_path), num_processes=2)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert_state_dicts_equal(rank0["weights"], rank1["weights"])
    assert rank0["applied"] == rank1["applied"]
    assert len(rank0["applied"]) == 3
    for local0, local1, applied in zip(rank0["local"], rank1["local"], rank0["applied"], strict=True):
        assert local0 != local1  # each rank saw its own shard of the batch
        assert applied == pytest.approx((local0 + local1) / 2, rel=1e-9)
    assert any(not torch.equal(w, rank0["initial"][k]) for k, w in rank0["weights"].items())


# ---------------------------------------------------------------------------------------------------------
# Issue 14: every loss evaluation sees the batch as given; the documented default schedule; one decay rule.


def test_label_smoothing_trains(fresh_model, make_args, tiny_lm_dataset, tiny_collator) -> None:
    """``compute_loss`` pops ``labels`` for label smoothing: the second perturbed pass must still have them."""
    args = make_args(max_steps=2, label_smoothing_factor=0.1)
    trainer = ZOTrainer(
        model=fresh_model(), args=args, train_dataset=tiny_lm_dataset, data_collator=tiny_collator
    )
    trainer.train()
    optimizer = unwrap_optimizer(trainer.optimizer)
    assert optimizer.zo_step == 2
    assert optimizer.last_kappa is not None and torch.isfinite(torch.tensor(optimizer.last_kappa))


def test_compute_loss_func_sees_the_labels_at_every_evaluation(
    fresh_model, make_args, tiny_lm_dataset, tiny_collator
) -> None:
    seen: list[torch.Tensor | None] = []

    def loss_func(outputs: Any, labels: torch.Tensor | None, num_items_in_batch: Any = None) -> torch.Tensor:
        seen.append(labels)
        logits = outputs.logits[:, :-1].flatten(0, 1)
        return torch.nn.functional.cross_entropy(logits, labels[:, 1:].flatten(), ignore_index=-100)

    args = make_args(max_steps=3, gradient_accumulation_steps=2)
    trainer = ZOTrainer(
        model=fresh_model(),
        args=args,
        train_dataset=tiny_lm_dataset,
        data_collator=tiny_collator,
        compute_loss_func=loss_func,
    )
    trainer.train()
    assert len(seen) == 3 * 2 * 2  # steps x micro-batches x two perturbed passes
    assert all(labels is not None and labels.shape[0] == 4 for labels in seen)


def test_default_schedule_is_the_documented_constant_rate(
    fresh_model, tmp_path: Path, tiny_lm_dataset, tiny_collator
) -> None:
    args = ZOConfig(
        str(tmp_path), max_steps=4, learning_rate=1e-3, logging_steps=1, use_cpu=True, report_to="none",
        save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    assert args.lr_scheduler_type == "constant"
    trainer = ZOTrainer(
        model=fresh_model(), args=args, train_dataset=tiny_lm_dataset, data_collator=tiny_collator
    )
    trainer.train()
    rates = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    assert rates == [1e-3] * 4


class _ScaledLinear(torch.nn.Module):
    """A bias, a 1-D scale that transformers' name rule would decay, and a matrix."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(6, 6)
        self.scale = torch.nn.Parameter(torch.ones(6))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        # A constant loss: κ = 0, so only weight decay moves the weights.
        return {"loss": (self.linear(x) * self.scale).sum() * 0 + 1.0}


@pytest.mark.parametrize("route", ["optimizer", "trainer"])
def test_one_weight_decay_rule(route: str, tmp_path: Path) -> None:
    """λ decays the parameters with two or more dimensions, never 1-D ones, used directly or in ZOTrainer."""
    model = _ScaledLinear()
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    lr, decay, steps = 0.1, 0.5, 3
    if route == "optimizer":
        # Even a group that asks for decay on a bias does not get it.
        optimizer = ZOOptimizer(
            [{"params": [model.linear.weight, model.linear.bias]}, {"params": [model.scale]}],
            method="tezo_sgd", lr=lr, weight_decay=decay, rank=2,
        )  # fmt: skip
        for _ in range(steps):
            optimizer.step(lambda: model(torch.ones(2, 6))["loss"])
    else:
        args = training_args(
            tmp_path, cls=ZOConfig, zo_method="tezo_sgd", zo_rank=2, learning_rate=lr, weight_decay=decay,
            max_steps=steps, per_device_train_batch_size=2, save_strategy="no", disable_tqdm=True,
        )  # fmt: skip
        data = [{"x": torch.ones(6), "labels": torch.zeros(1)}] * 4
        trainer = ZOTrainer(model=model, args=args, train_dataset=data)
        assert trainer.get_decay_parameter_names(model) == ["linear.weight"]
        trainer.train()
    expected = start["linear.weight"].clone()
    for _ in range(steps):
        expected.mul_(1.0 - lr * decay)
    assert torch.equal(model.linear.weight.detach(), expected)
    assert torch.equal(model.linear.bias.detach(), start["linear.bias"])
    assert torch.equal(model.scale.detach(), start["scale"])
