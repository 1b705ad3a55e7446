"""The testing contracts: each one passes on correct code and fails on the defect it is named after."""

import copy
from importlib.metadata import EntryPoint

import pytest
import torch
from transformers import Trainer

from paperpack.core import cli
from paperpack.core.errors import ConfigError
from paperpack.core.hf import training_args
from paperpack.core.testing.contracts import (
    assert_parameters_changed,
    check_cli_fails_cleanly,
    snapshot_parameters,
    snapshot_tree,
)
from paperpack.core.testing.resume import StopAtStep, check_trainer_resume

from ._callback_fixtures import ParameterTrace


def make_factory(tiny_lm, tiny_lm_dataset, tiny_collator, trainer_cls=Trainer, callback=ParameterTrace):
    def make(settings, callbacks):
        args = training_args(
            per_device_train_batch_size=4,
            learning_rate=3e-3,
            seed=0,
            data_seed=0,
            disable_tqdm=True,
            **settings,
        )
        return trainer_cls(
            model=copy.deepcopy(tiny_lm[0]),
            args=args,
            train_dataset=tiny_lm_dataset,
            data_collator=tiny_collator,
            callbacks=[callback(), *callbacks],
        )

    return make


@pytest.mark.slow
def test_trainer_resume_matches_weights_optimizer_and_callbacks(
    tiny_lm, tiny_lm_dataset, tiny_collator, tmp_path
):
    result = check_trainer_resume(make_factory(tiny_lm, tiny_lm_dataset, tiny_collator), tmp_path)
    assert result.resumed.state.global_step == 6 and result.checkpoint.name == "checkpoint-3"
    assert any(isinstance(c, StopAtStep) for c in result.interrupted.callback_handler.callbacks)


class ForgetsOptimizer(Trainer):
    """A resume bug: the optimizer's moments are not restored from the checkpoint."""

    def _load_optimizer_and_scheduler(self, checkpoint):
        return None


class ForgetfulTrace(ParameterTrace):
    """A resume bug: the callback's state is not restored."""

    def load_state_dict(self, state):
        pass


@pytest.mark.slow
@pytest.mark.parametrize(
    "bug",
    [
        (ForgetsOptimizer, ParameterTrace, "not close|differ"),
        (Trainer, ForgetfulTrace, "forgetful_trace/steps"),
    ],
    ids=["optimizer", "callback"],
)
def test_trainer_resume_catches_what_a_resume_forgets(tiny_lm, tiny_lm_dataset, tiny_collator, tmp_path, bug):
    trainer_cls, callback, message = bug
    make = make_factory(tiny_lm, tiny_lm_dataset, tiny_collator, trainer_cls=trainer_cls, callback=callback)
    with pytest.raises(AssertionError, match=message):
        check_trainer_resume(make, tmp_path)


def test_parameters_changed():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model[1].requires_grad_(False)
    before = snapshot_parameters(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    with pytest.raises(AssertionError, match=r"1 of 2 trainable parameters did not change: \['0.bias'\]"):
        assert_parameters_changed(before, model)
    assert_parameters_changed(before, model, allow_unchanged=[r"\.bias$"])
    with torch.no_grad():
        model[0].bias.add_(1.0)
        model[1].weight.add_(1.0)
    with pytest.raises(AssertionError, match=r"frozen parameters changed: \['1.weight'\]"):
        assert_parameters_changed(before, model)


def test_parameters_changed_after_real_training(tiny_lm, tiny_lm_dataset, tiny_collator, tmp_path):
    model = copy.deepcopy(tiny_lm[0])
    before = snapshot_parameters(model)
    args = training_args(
        tmp_path, max_steps=2, per_device_train_batch_size=4, save_strategy="no", disable_tqdm=True
    )
    Trainer(model=model, args=args, train_dataset=tiny_lm_dataset, data_collator=tiny_collator).train()
    assert_parameters_changed(before, model)


def fake_cli(monkeypatch, handler):
    def configure(parser):
        parser.add_argument("--output", required=True)
        parser.set_defaults(handler=handler)

    commands = {"fake": EntryPoint("fake", "x:y", cli.COMMANDS_GROUP)}
    monkeypatch.setattr(cli, "discover", lambda group: commands if group == cli.COMMANDS_GROUP else {})
    monkeypatch.setattr(EntryPoint, "load", lambda self: configure)


def test_cli_contract_catches_a_write_before_the_error(tmp_path, monkeypatch):
    def writes_then_fails(args):
        (tmp_path / "inputs" / "scratch").mkdir()  # an empty folder is a change too
        raise ConfigError("`k` must be >= 1, got 0")

    (tmp_path / "inputs").mkdir()
    fake_cli(monkeypatch, writes_then_fails)
    with pytest.raises(AssertionError, match=r"changed the file system: \['created .*scratch'\]"):
        check_cli_fails_cleanly(
            ["fake", "--output", str(tmp_path / "o")], "`k` must be", paths=[tmp_path / "inputs"]
        )


def test_cli_contract_catches_a_partial_output_and_a_wrong_message(tmp_path, monkeypatch):
    def leaves_output(args):
        (tmp_path / "o").mkdir()
        raise ConfigError("bad")

    fake_cli(monkeypatch, leaves_output)
    with pytest.raises(AssertionError, match=r"changed the file system: \[.created .*/o.\]"):
        check_cli_fails_cleanly(["fake", "--output", str(tmp_path / "o")], "bad", output=tmp_path / "o")
    with pytest.raises(AssertionError, match="stderr does not match"):
        check_cli_fails_cleanly(["fake", "--output", str(tmp_path / "p")], "something else")
    message = check_cli_fails_cleanly(["fake"], "the following arguments are required: --output")
    assert message.startswith("paperpack fake: error:")


def test_snapshot_sees_links_and_absence(tmp_path):
    (tmp_path / "a").write_text("1")
    (tmp_path / "link").symlink_to(tmp_path / "a")
    snapshot = snapshot_tree([tmp_path, tmp_path / "missing"])
    assert snapshot[str(tmp_path / "link")] == f"-> {tmp_path / 'a'}"
    assert snapshot[str(tmp_path / "missing")] == "<absent>"


def test_tiny_data_fixtures(
    tiny_texts, tiny_lm_dataset, tiny_collator, tiny_text_dataset, tiny_prompt_completion_dataset
):
    assert len(tiny_texts) == len(tiny_lm_dataset) == len(tiny_text_dataset) == 32
    batch = tiny_collator([tiny_lm_dataset[i] for i in range(4)])
    assert batch["input_ids"].shape[0] == 4 and (batch["labels"] == -100).any()
    row = tiny_prompt_completion_dataset[0]
    a, b = (int(x) for x in row["prompt"].removeprefix("Q: what is ").removesuffix("? A:").split(" + "))
    assert row["completion"] == f" {a + b}"
