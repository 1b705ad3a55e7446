import copy
import json
from pathlib import Path

import pytest
import torch

from paperpack.core.errors import CheckpointError, ConfigError
from paperpack.core.hf import (
    StatefulCallback,
    read_callback_state,
    training_args,
    write_callback_state,
)
from paperpack.core.testing.contracts import assert_states_equal, run_distributed
from paperpack.core.testing.resume import check_callback_resume

from ._callback_fixtures import ParameterTrace, tiny_dataset

HERE = Path(__file__).parent


def test_state_round_trip_nested(tmp_path):
    state = {"a": torch.arange(3), "nested": {"list": [torch.ones(2), 3, "x", None]}, "flag": True}
    write_callback_state(state, tmp_path, "thing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing.json", "thing.safetensors"]
    assert_states_equal(read_callback_state(tmp_path, "thing"), state)


def test_state_refuses_non_json_values(tmp_path):
    with pytest.raises(ConfigError, match="'/bad' is a set"):
        write_callback_state({"bad": {1, 2}}, tmp_path, "thing")


def test_state_name_defaults_to_snake_case():
    assert ParameterTrace.state_name == "parameter_trace"

    class Named(StatefulCallback):
        state_name = "custom"

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    assert Named.state_name == "custom"
    with pytest.raises(TypeError, match="abstract"):
        StatefulCallback()


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(tmp_path, tiny_lm):
    model, tokenizer = tiny_lm
    full, resumed = check_callback_resume(
        ParameterTrace,
        model_factory=lambda: copy.deepcopy(model),
        train_dataset=tiny_dataset(tokenizer),
        tmp_path=tmp_path,
    )
    assert full.steps == [1, 2, 3, 4, 5, 6] and resumed.steps == full.steps
    assert resumed.restored_from == 3
    state_files = sorted((tmp_path / "interrupted" / "checkpoint-3" / "paperpack_callbacks").iterdir())
    assert [p.name for p in state_files] == ["parameter_trace.json", "parameter_trace.safetensors"]


def test_resume_without_saved_state_fails_clearly(tmp_path, tiny_lm):
    from transformers import Trainer

    from paperpack.core.testing.resume import StopAtStep

    model, tokenizer = tiny_lm
    dataset = tiny_dataset(tokenizer, rows=8)
    args = training_args(
        tmp_path, max_steps=2, save_steps=1, per_device_train_batch_size=2, disable_tqdm=True
    )
    Trainer(model=copy.deepcopy(model), args=args, train_dataset=dataset, callbacks=[StopAtStep(1)]).train()
    trainer = Trainer(
        model=copy.deepcopy(model), args=args, train_dataset=dataset, callbacks=[ParameterTrace()]
    )
    with pytest.raises(CheckpointError, match="no ParameterTrace state was found"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))


@pytest.mark.slow
def test_resume_under_accelerate_two_processes(tmp_path):
    run_distributed(HERE / "_distributed_resume.py", str(tmp_path))
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for report in reports:
        assert report["world"] == 2
        assert report["restored_from"] == 3
        assert report["steps"] == [1, 2, 3, 4, 5, 6]
        torch.testing.assert_close(
            torch.tensor(report["resumed"]), torch.tensor(report["full"]), atol=0, rtol=0
        )
    # DDP keeps replicas identical, so both ranks restore and trace the same state
    assert reports[0]["resumed"] == reports[1]["resumed"]
    # only rank 0 wrote the callback state
    saved = list((tmp_path / "interrupted" / "checkpoint-3" / "paperpack_callbacks").iterdir())
    assert sorted(p.name for p in saved) == ["parameter_trace.json", "parameter_trace.safetensors"]
