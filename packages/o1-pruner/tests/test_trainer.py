"""O1PrunerTrainer on tiny_causal_lm(): the loss at r = 1, the frozen reference, accumulation, resume, PEFT, DDP."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import HfArgumentParser, TrainerCallback

from paperpack.core.errors import ConfigError
from paperpack.core.testing.contracts import (
    assert_parameters_changed,
    assert_state_dicts_equal,
    run_distributed,
    snapshot_parameters,
)
from paperpack.core.testing.resume import check_trainer_resume
from paperpack.o1_pruner import O1PrunerConfig, O1PrunerTrainer, reference_log_probs

HERE = Path(__file__).parent


def _losses(trainer: O1PrunerTrainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.fixture(scope="module")
def stored_samples(samples, tiny_lm) -> list[dict[str, Any]]:
    """``samples`` with the initial model's per-token log-probabilities stored, as presample writes them."""
    logps = reference_log_probs(
        copy.deepcopy(tiny_lm[0]),
        [s["prompt_ids"] for s in samples],
        [s["completion_ids"] for s in samples],
        batch_size=5,
        pad_token_id=tiny_lm[1].pad_token_id,
    )
    return [{**sample, "ref_logps": values} for sample, values in zip(samples, logps, strict=True)]


def test_first_loss_is_minus_mean_weight_and_the_model_moves(
    fresh_model, make_args, samples, tiny_lm
) -> None:
    model = fresh_model()
    before = snapshot_parameters(model)
    reference = fresh_model()
    ref_before = {k: v.clone() for k, v in reference.state_dict().items()}
    args = make_args(max_steps=4, per_device_train_batch_size=16)  # one batch = the whole data set
    trainer = O1PrunerTrainer(
        model=model, args=args, ref_model=reference, train_dataset=samples, processing_class=tiny_lm[1]
    )
    trainer.train()
    mean_weight = sum(s["weight"] for s in samples) / len(samples)
    losses = _losses(trainer)
    assert losses[0] == pytest.approx(-mean_weight, abs=1e-6)  # r = 1 at θ = θ_ref: ℓ = −w
    assert losses[-1] < losses[0]  # the objective improves on the data it is trained on
    first = next(e for e in trainer.state.log_history if "loss" in e)
    assert first["ratio"] == pytest.approx(1.0) and first["clip_fraction"] == 0.0
    assert_parameters_changed(before, model)
    assert_state_dicts_equal(reference.state_dict(), ref_before)  # the reference never changes
    assert all(not p.requires_grad for p in reference.parameters())


def test_without_ref_model_the_reference_is_a_frozen_copy_of_the_initial_model(
    fresh_model, make_args, samples, tiny_lm
) -> None:
    initial = fresh_model()
    trainer = O1PrunerTrainer(
        model=fresh_model(), args=make_args(), train_dataset=samples, processing_class=tiny_lm[1]
    )
    trainer.train()
    assert_state_dicts_equal(trainer.ref_model.state_dict(), initial.state_dict())
    explicit = O1PrunerTrainer(
        model=fresh_model(),
        args=make_args("two"),
        ref_model=fresh_model(),
        train_dataset=samples,
        processing_class=tiny_lm[1],
    )
    explicit.train()
    assert_state_dicts_equal(explicit.model.state_dict(), trainer.model.state_dict())


@pytest.mark.parametrize("ratio_level", ["sequence_mean", "token"])
def test_gradient_accumulation_equals_the_larger_batch(
    ratio_level, fresh_model, make_args, samples, tiny_lm
) -> None:
    # 12 samples: one step of 12, or 3 micro-batches of 4; then 2 micro-batches of 5 and 1 of 2 (uneven).
    # SGD, so that the update is the gradient itself (Adam's g/√v would magnify float32 rounding of tiny g).
    data = samples[:12]
    models = []
    for subdir, batch, accumulation in (("big", 12, 1), ("acc", 4, 3), ("uneven", 5, 3)):
        model = fresh_model()
        args = make_args(
            subdir,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            max_steps=2,
            ratio_level=ratio_level,
            dataloader_drop_last=False,
            lr_scheduler_type="constant",
            optim="sgd",
            learning_rate=0.1,
        )
        O1PrunerTrainer(
            model=model, args=args, ref_model=fresh_model(), train_dataset=data, processing_class=tiny_lm[1]
        ).train()
        models.append(model)
    # A mean per micro-batch (the trap) would weight the 2-sample micro-batch like the 5-sample ones.
    assert_state_dicts_equal(models[1].state_dict(), models[0].state_dict(), atol=1e-6, rtol=0)
    assert_state_dicts_equal(models[2].state_dict(), models[0].state_dict(), atol=1e-6, rtol=0)
    assert_parameters_changed(snapshot_parameters(fresh_model()), models[0])  # the steps did train


@pytest.mark.parametrize("ratio_level", ["sequence_mean", "token"])
def test_stored_reference_log_probs_train_as_the_reference_pass(  # noqa: PLR0917
    ratio_level, fresh_model, make_args, samples, stored_samples, tiny_lm
) -> None:
    stored = stored_samples
    models = []
    for subdir, data, ref_model in (("pass", samples, fresh_model()), ("stored", stored, None)):
        args = make_args(subdir, ratio_level=ratio_level, optim="sgd", learning_rate=0.1)
        trainer = O1PrunerTrainer(
            model=fresh_model(),
            args=args,
            ref_model=ref_model,
            train_dataset=data,
            processing_class=tiny_lm[1],
        )
        trainer.train()
        models.append(trainer.model.state_dict())
    assert trainer.ref_model is None  # no second model and no reference pass
    assert_state_dicts_equal(models[1], models[0], atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="`ref_model` is given but the data carries"):
        O1PrunerTrainer(model=fresh_model(), args=make_args(), ref_model=fresh_model(), train_dataset=stored)
    short = [{**stored[0], "ref_logps": stored[0]["ref_logps"][:-1]}, *stored[1:]]
    with pytest.raises(ConfigError, match="sample 0 has `ref_logps` that are not"):
        O1PrunerTrainer(model=fresh_model(), args=make_args(), train_dataset=short)


@pytest.mark.parametrize("reference", ["initial_copy", "stored", "lora"])
def test_resume_equals_the_uninterrupted_run(  # noqa: PLR0917
    reference, fresh_model, make_args, samples, stored_samples, tiny_lm, tmp_path
) -> None:
    """Weights, optimizer, scheduler, callbacks (the core's contract), the reference and the losses."""
    data = stored_samples if reference == "stored" else samples

    def model() -> torch.nn.Module:
        if reference != "lora":
            return fresh_model()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return get_peft_model(fresh_model(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))

    def make_trainer(settings: dict[str, Any], callbacks: list[TrainerCallback]) -> O1PrunerTrainer:
        folder = Path(settings.pop("output_dir"))  # tmp_path / "full" or "interrupted"
        args = make_args(folder.name, lr_scheduler_type="linear", **settings)
        return O1PrunerTrainer(
            model=model(), args=args, train_dataset=data, processing_class=tiny_lm[1], callbacks=callbacks
        )

    check = check_trainer_resume(make_trainer, tmp_path)
    if reference == "initial_copy":
        # The reference stays the initial model (the copy is taken before the checkpoint is loaded).
        assert_state_dicts_equal(check.resumed.ref_model.state_dict(), fresh_model().state_dict())
    else:
        assert check.resumed.ref_model is None  # stored log-probabilities, or the base without the adapter
    assert _losses(check.resumed)[-3:] == pytest.approx(_losses(check.full)[-3:], abs=0)


def test_peft_reference_is_the_base_with_the_adapter_disabled(
    fresh_model, make_args, samples, tiny_lm
) -> None:
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, init_lora_weights=False)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = get_peft_model(fresh_model(), lora)
    before = snapshot_parameters(model)
    trainer = O1PrunerTrainer(
        model=model, args=make_args(), train_dataset=samples, processing_class=tiny_lm[1]
    )
    assert trainer.ref_model is None  # no second copy
    trainer.train()
    assert_parameters_changed(before, model)  # every adapter weight moved, no weight of the base did
    # Same run with the base as an explicit second reference model: the same adapter weights.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        twin = get_peft_model(fresh_model(), lora)
    O1PrunerTrainer(
        model=twin,
        args=make_args("twin"),
        ref_model=fresh_model(),
        train_dataset=samples,
        processing_class=tiny_lm[1],
    ).train()
    adapters = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for name, param in twin.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, adapters[name], atol=1e-6, rtol=0)


def test_text_records_are_tokenized(fresh_model, make_args, tiny_lm) -> None:
    records = [
        {"prompt": "the model", "completion": " and the data", "weight": w} for w in (1.0, -1.0, 0.5, 0.2)
    ]
    trainer = O1PrunerTrainer(
        model=fresh_model(), args=make_args(max_steps=1), train_dataset=records, processing_class=tiny_lm[1]
    )
    first = trainer.train_dataset[0]
    assert first["completion_ids"][-1] == tiny_lm[1].eos_token_id
    assert first["prompt_ids"] == tiny_lm[1]("the model")["input_ids"]
    trainer.train()


def test_bad_input(fresh_model, make_args, samples, tiny_lm) -> None:
    model, tokenizer = fresh_model(), tiny_lm[1]
    with pytest.raises(TypeError, match="O1PrunerConfig"):
        O1PrunerTrainer(model=model, args=make_args().to_dict(), train_dataset=samples)
    with pytest.raises(ConfigError, match="needs a 'weight' column"):
        O1PrunerTrainer(
            model=model, args=make_args(), train_dataset=[{"prompt_ids": [1], "completion_ids": [2]}]
        )
    with pytest.raises(ConfigError, match="non-finite weight"):
        O1PrunerTrainer(model=model, args=make_args(), train_dataset=[{**samples[0], "weight": float("nan")}])
    long = {"prompt_ids": [1] * 2000, "completion_ids": [5] * 60, "weight": 1.0}
    with pytest.raises(ConfigError, match=r"sample 1 has 2060 tokens .* beyond the model's context of 2048"):
        O1PrunerTrainer(
            model=model, args=make_args(), train_dataset=[samples[0], long], processing_class=tokenizer
        )
    with pytest.raises(ConfigError, match="pass the tokenizer"):
        O1PrunerTrainer(
            model=model, args=make_args(), train_dataset=[{"prompt": "a", "completion": "b", "weight": 1.0}]
        )


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"num_presamples": 1}, "`num_presamples` must be >= 2"),
        ({"lam": -0.5}, "`lam` must be >= 0"),
        ({"samples_per_problem": 5}, r"`samples_per_problem` must be <= `num_presamples` \(K=4\)"),
        ({"weight_clip": [4.0, -2.0]}, "low < high"),
        ({"cliprange": 1.5}, r"`cliprange` must be in \(0, 1\)"),
        ({"ratio_level": "sequence"}, "`ratio_level` must be one of 'sequence_mean', 'token'"),
        ({"presample_top_p": 0.0}, r"`presample_top_p` must be in \(0, 1\]"),
    ],
)
def test_config_refuses_bad_values(overrides, match, make_args) -> None:
    with pytest.raises(ConfigError, match=match):
        make_args(**overrides)


def test_config_parses_with_hf_argument_parser(tmp_path: Path) -> None:
    (args,) = HfArgumentParser(O1PrunerConfig).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--num_presamples",
            "8",
            "--lam",
            "5",
            "--weight_clip",
            "-1",
            "3",
            "--ratio_level",
            "token",
            "--use_cpu",
            "true",
            "--report_to",
            "none",
        ]
    )
    assert (args.num_presamples, args.lam, args.weight_clip, args.ratio_level) == (
        8,
        5.0,
        [-1.0, 3.0],
        "token",
    )
    assert args.remove_unused_columns is False


def test_ddp_equals_one_process_on_the_whole_batch(
    tmp_path: Path, fresh_model, make_args, samples, tiny_lm
) -> None:
    """Two ranks with 2 samples each (and accumulation) train exactly as one process with 8 per step."""
    single = fresh_model()
    O1PrunerTrainer(
        model=single,
        args=make_args(
            "single",
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
            train_sampling_strategy="sequential",
            optim="sgd",
            learning_rate=0.1,
        ),
        train_dataset=samples,
        processing_class=tiny_lm[1],
    ).train()
    out = tmp_path / "ddp"
    run_distributed(HERE / "ddp_train.py", str(out))
    ddp = torch.load(out / "weights.pt")
    assert_state_dicts_equal(ddp, single.state_dict(), atol=1e-6, rtol=0)
    assert json.loads((out / "ranks.json").read_text()) == {"world_size": 2}
