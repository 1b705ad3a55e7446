"""ZOSFTTrainer (TRL's SFTTrainer, zeroth-order step) on tiny_causal_lm(): same step as ZOTrainer, TeZO span,
TRL's metrics, resume, PEFT, config, bad input."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from torch import Tensor
from transformers import HfArgumentParser, TrainerCallback, TrainingArguments
from trl import SFTConfig

from paperpack.core.errors import ConfigError
from paperpack.core.testing.contracts import (
    assert_parameters_changed,
    snapshot_parameters,
)
from paperpack.core.testing.resume import check_trainer_resume
from paperpack.tezo import ZOConfig, ZOSFTConfig, ZOSFTTrainer, ZOTrainer
from paperpack.tezo.optim import unwrap_optimizer


class RecordKappa(TrainerCallback):
    """Collects κ as applied at every optimizer step."""

    def __init__(self) -> None:
        self.kappas: list[float] = []

    def on_optimizer_step(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        kappa = unwrap_optimizer(kwargs["optimizer"]).last_kappa
        assert kappa is not None
        self.kappas.append(kappa)


def _sft_trainer(
    model: Any, args: ZOSFTConfig, dataset: Dataset, tokenizer: Any, **kwargs: Any
) -> ZOSFTTrainer:
    return ZOSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, **kwargs)


def test_step_equals_zo_trainer_on_the_same_batch(
    fresh_model, make_sft_args, make_args, tiny_text_dataset, tiny_lm
) -> None:
    """One ZOSFTTrainer step (two accumulated micro-batches) applies ZOTrainer's κ and update on the same batch.

    ZOTrainer gets the dataset ZOSFTTrainer prepared (EOS added, truncated, labels) and its collator, in the same
    (sequential) order, so the inputs, seeds and directions are identical and only the loss code differs: TRL's
    chunked log-probabilities divided by the token count of the accumulated batch against the model's own
    cross-entropy. The two agree to float32 rounding (a few ulp of ℓ ≈ 6, over 2ρ = 0.02 in κ); a wrong sign,
    scale, normalisation, batch or direction would be off by order one, and κ is over 100 times the tolerance.
    """
    settings: dict[str, Any] = {
        "zo_method": "tezo_sgd",
        "zo_eps": 1e-2,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "max_steps": 1,
        "train_sampling_strategy": "sequential",
    }
    start = {k: v.clone() for k, v in tiny_lm[0].state_dict().items()}
    sft_model, sft_kappa = fresh_model(), RecordKappa()
    sft = _sft_trainer(
        sft_model, make_sft_args(**settings), tiny_text_dataset, tiny_lm[1], callbacks=[sft_kappa]
    )
    sft.train()

    zo_model, zo_kappa = fresh_model(), RecordKappa()
    zo = ZOTrainer(
        model=zo_model,
        args=make_args("zo", **settings),
        train_dataset=sft.train_dataset,
        data_collator=sft.data_collator,
        callbacks=[zo_kappa],
    )
    zo.train()

    ulp = torch.finfo(torch.float32).eps * 4  # ulp of a loss in [4, 8)
    tolerance = 8 * ulp / (2 * 1e-2)
    assert len(sft_kappa.kappas) == len(zo_kappa.kappas) == 1
    assert abs(zo_kappa.kappas[0]) > 100 * tolerance, zo_kappa.kappas
    assert sft_kappa.kappas == pytest.approx(zo_kappa.kappas, abs=tolerance)
    sft_loss, zo_loss = (next(e["loss"] for e in t.state.log_history if "loss" in e) for t in (sft, zo))
    assert sft_loss == pytest.approx(zo_loss, abs=8 * ulp)
    sft_after, zo_after = sft_model.state_dict(), zo_model.state_dict()
    for name, before in start.items():
        sft_delta, zo_delta = sft_after[name] - before, zo_after[name] - before
        scale = float(zo_delta.abs().max())
        assert scale > 1e-5, name  # every tensor moved (1-D ones too: zo_one_dim="dense")
        assert float((sft_delta - zo_delta).abs().max()) <= 1e-3 * scale, name


def _span_residual(delta: Tensor, U: Tensor, V: Tensor) -> float:
    """Relative least-squares residual of ΔW against span{u_s v_sᵀ}."""
    basis = torch.stack([torch.outer(U[:, s], V[:, s]).reshape(-1) for s in range(U.shape[1])], dim=1)
    coefficients = torch.linalg.lstsq(basis.double(), delta.double().reshape(-1, 1)).solution
    return float((basis.double() @ coefficients - delta.double().reshape(-1, 1)).norm() / delta.norm())


def test_tezo_sgd_run_stays_in_the_factor_span_and_logs_trl_metrics(
    fresh_model, make_sft_args, tiny_text_dataset, tiny_lm
) -> None:
    """A real run: each matrix moves only along its fixed U, V; TRL's metrics are logged as training metrics once.

    Without the handling in ZOSFTTrainer, TRL (which picks the metrics' split from ``model.training``) logs
    ``eval_entropy`` with the training loss and never counts ``num_tokens``; counting in both forward passes would
    double it.
    """
    model = fresh_model()
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = make_sft_args(
        zo_method="tezo_sgd",
        max_steps=3,
        train_sampling_strategy="sequential",
        eval_strategy="steps",
        eval_steps=3,
        per_device_eval_batch_size=8,
    )
    trainer = _sft_trainer(
        model, args, tiny_text_dataset, tiny_lm[1], eval_dataset=tiny_text_dataset.select(range(8))
    )
    trainer.train()

    optimizer = unwrap_optimizer(trainer.optimizer)
    assert optimizer.zo_step == 3
    matrices = 0
    for name, param in model.named_parameters():
        if param.ndim < 2:
            continue
        delta = (param.detach() - start[name]).reshape(param.shape[0], -1)
        U, V = optimizer.direction(param).factors(param, optimizer.state[param])
        assert delta.abs().max() > 0, name
        # A direction outside the span would leave a residual of order one.
        assert _span_residual(delta, U, V) < 1e-4, name
        matrices += 1
    assert matrices == 16  # embeddings, lm_head, 2 layers x (4 attention + 3 MLP)

    train_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    eval_logs = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(train_logs) == 3 and len(eval_logs) == 1
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    for step, entry in enumerate(train_logs, start=1):
        assert not any(key.startswith("eval_") for key in entry), entry
        assert 0 < entry["entropy"] < 7 and 0 <= entry["mean_token_accuracy"] <= 1
        assert entry["num_tokens"] == sum(lengths[: 4 * step])  # sequential batches of 4, no padding counted
    assert {"eval_entropy", "eval_mean_token_accuracy"} <= eval_logs[0].keys()


def test_resume_reproduces_the_uninterrupted_run(
    fresh_model, make_sft_args, tiny_text_dataset, tiny_lm, tmp_path: Path
) -> None:
    def make(settings: dict[str, Any], callbacks: list[TrainerCallback]) -> ZOSFTTrainer:
        options = {"zo_method": "tezo_adam", "lr_scheduler_type": "linear", **settings}
        args = make_sft_args(str(Path(options.pop("output_dir")).relative_to(tmp_path)), **options)
        return _sft_trainer(fresh_model(), args, tiny_text_dataset, tiny_lm[1], callbacks=callbacks)

    check = check_trainer_resume(make, tmp_path)
    assert unwrap_optimizer(check.resumed.optimizer).zo_step == 6


def test_peft_config_trains_only_the_adapter(fresh_model, make_sft_args, tiny_text_dataset, tiny_lm) -> None:
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")
    trainer = _sft_trainer(
        fresh_model(), make_sft_args(max_steps=3), tiny_text_dataset, tiny_lm[1], peft_config=lora
    )
    model = trainer.model
    parameters = snapshot_parameters(model)
    assert all("lora_" in name for name, p in model.named_parameters() if p.requires_grad)
    trainer.train()
    optimizer = unwrap_optimizer(trainer.optimizer)
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}
    assert_parameters_changed(parameters, model)  # every adapter parameter, and no frozen one


def test_config_carries_both_parents_fields_and_defaults(tmp_path: Path) -> None:
    (args,) = HfArgumentParser(ZOSFTConfig).parse_args_into_dataclasses(
        [
            "--output_dir", str(tmp_path), "--zo_method", "lozo", "--zo_rank", "2", "--max_length", "64",
            "--completion_only_loss", "false", "--bf16", "false", "--use_cpu", "true", "--report_to", "none",
        ]
    )  # fmt: skip
    assert isinstance(args, ZOSFTConfig) and isinstance(args, ZOConfig) and isinstance(args, SFTConfig)
    kwargs = args.optimizer_kwargs()
    assert (kwargs["method"], kwargs["rank"], args.max_length, args.completion_only_loss) == (
        "lozo",
        2,
        64,
        False,
    )
    # Where the parents disagree: ZOConfig's learning rate, schedule and clipping, no checkpointing,
    # SFTConfig's logging.
    assert (args.learning_rate, args.max_grad_norm, args.logging_steps) == (1e-5, 0.0, 10)
    assert args.lr_scheduler_type == "constant"
    assert args.gradient_checkpointing is False and args.bf16 is False
    # SFTConfig's __post_init__ ran: "auto" padding resolves to None off Neuron; so did _BaseConfig's bf16 default.
    assert args.pad_to_multiple_of is None
    assert ZOSFTConfig(str(tmp_path), use_cpu=True, report_to="none").bf16 is True
    defaults = {f.name: f.default for f in dataclasses.fields(ZOSFTConfig)}
    assert (
        defaults["bf16"] is None and defaults["zo_method"] == "tezo_adam" and defaults["max_length"] == 1024
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"zo_rank": 0}, "`zo_rank` must be >= 1, got 0"),
        ({"gradient_checkpointing": True}, "`gradient_checkpointing` must be False"),
        ({"fp16": True}, "`fp16` must be False"),
        ({"activation_offloading": True}, "`activation_offloading` must be False"),
        ({"loss_type": "dft"}, "`loss_type` must be 'nll' for zeroth-order training, got 'dft'"),
    ],
)
def test_config_rejects_bad_values(overrides: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        ZOSFTConfig(str(tmp_path), use_cpu=True, bf16=False, report_to="none", **overrides)


def test_trainer_rejects_other_arguments_and_optimizers(
    fresh_model, make_sft_args, make_args, tiny_text_dataset, tiny_lm
) -> None:
    model, tokenizer = fresh_model(), tiny_lm[1]
    with pytest.raises(TypeError, match="`args` must be a ZOSFTConfig, got ZOConfig"):
        _sft_trainer(model, make_args(), tiny_text_dataset, tokenizer)
    sft_args = SFTConfig(make_args().output_dir, use_cpu=True, bf16=False, report_to="none")
    with pytest.raises(TypeError, match="`args` must be a ZOSFTConfig, got SFTConfig"):
        _sft_trainer(model, sft_args, tiny_text_dataset, tokenizer)
    with pytest.raises(TypeError, match="`args` must be a ZOSFTConfig, got NoneType"):
        ZOSFTTrainer(model=model, train_dataset=tiny_text_dataset, processing_class=tokenizer)
    adam = torch.optim.AdamW(model.parameters())
    with pytest.raises(TypeError, match=r"`optimizers\[0\]` must be a ZOOptimizer, got AdamW"):
        _sft_trainer(model, make_sft_args(), tiny_text_dataset, tokenizer, optimizers=(adam, None))
    with pytest.raises(TypeError, match="must be ZOOptimizer"):
        _sft_trainer(
            model,
            make_sft_args(),
            tiny_text_dataset,
            tokenizer,
            optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.1}),
        )


def test_label_smoothing_and_compute_loss_func(
    fresh_model, make_sft_args, tiny_text_dataset, tiny_lm
) -> None:
    """Every loss evaluation sees the batch as given (``compute_loss`` pops ``labels`` for both)."""
    seen: list[Any] = []

    def loss_func(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        seen.append(labels)
        logits = outputs.logits[:, :-1].flatten(0, 1)
        return torch.nn.functional.cross_entropy(logits, labels[:, 1:].flatten(), ignore_index=-100)

    for subdir, extra in (("smoothing", {"label_smoothing_factor": 0.1}), ("func", {})):
        trainer = ZOSFTTrainer(
            model=fresh_model(),
            args=make_sft_args(subdir, max_steps=2, **extra),
            train_dataset=tiny_text_dataset,
            processing_class=tiny_lm[1],
            compute_loss_func=loss_func if subdir == "func" else None,
        )
        trainer.train()
        assert unwrap_optimizer(trainer.optimizer).zo_step == 2
    assert len(seen) == 4 and all(labels is not None for labels in seen)
