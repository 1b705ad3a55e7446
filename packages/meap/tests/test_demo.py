"""The demo's task, evaluation and report plumbing (the training itself runs in `paperpack demo`)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from paperpack.core.testing.contracts import check_demo
from paperpack.meap import demo
from paperpack.meap.experiment import RecallSettings, RecallTask, accuracy_by_depth, run_recall


def test_records_have_the_documented_layout() -> None:
    task = RecallTask(num_pairs=5, num_keys=10, num_values=7)
    ids, order = task.sample(random.Random(0))
    assert len(ids) == task.length and sorted(order) == list(range(5))
    tokenizer = task.tokenizer()
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "<s>" and tokens[11] == "<query>" and tokens[-1] == "</s>"
    context = dict(zip(tokens[1:11:2], tokens[2:11:2], strict=True))
    queries = list(zip(tokens[12:-1:2], tokens[13:-1:2], strict=True))
    assert len(context) == 5 and all(context[key] == value for key, value in queries)
    assert [tokens[1 + 2 * depth] for depth in order] == [key for key, _ in queries]
    assert tokenizer.mask_token_id == 4 and "<query>" in tokenizer.all_special_tokens


class Oracle(torch.nn.Module):
    """Predicts the right value for the pairs at the given depths and a wrong token elsewhere."""

    def __init__(self, task: RecallTask, known_depths: set[int]) -> None:
        super().__init__()
        self.task, self.known = task, known_depths

    def forward(self, input_ids: torch.Tensor) -> object:
        logits = torch.zeros((*input_ids.shape, self.task.vocab_size))
        for row, ids in enumerate(input_ids.tolist()):
            context = {ids[1 + 2 * d]: (d, ids[2 + 2 * d]) for d in range(self.task.num_pairs)}
            for position in range(self.task.query_start, self.task.length - 1, 2):
                depth, value = context[ids[position]]
                logits[row, position, value if depth in self.known else 0] = 1.0
        return type("Output", (), {"logits": logits})()


def test_accuracy_by_depth_scores_each_depth() -> None:
    task = RecallTask(num_pairs=6, num_keys=12, num_values=9)
    accuracy = accuracy_by_depth(Oracle(task, {0, 3}), task, records=20, seed=0)
    assert accuracy == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]


def test_the_task_model_is_sized_to_the_task_tokenizer() -> None:
    task = RecallTask(num_pairs=4, num_keys=8, num_values=8)
    model = task.model(3)
    assert model.config.vocab_size == task.vocab_size == len(task.tokenizer())
    assert model.config.max_position_embeddings == 2 * task.length
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (64, 2)
    assert torch.equal(model.lm_head.weight, task.model(3).lm_head.weight)  # the seed fixes the init


TINY = RecallSettings(
    pretrain_steps=2, sft_steps=2, eval_records=8, task=RecallTask(num_pairs=4, num_keys=8, num_values=8)
)


@pytest.mark.slow
def test_experiment_results_are_typed_and_reproducible() -> None:
    first = run_recall(TINY, [0], arms=("NTP", "MEAP-SFT"))
    assert [(run.arm, run.seed, run.steps) for run in first.runs] == [("NTP", 0, 2), ("MEAP-SFT", 0, 2)]
    assert first.arms() == ["NTP", "MEAP-SFT"] and len(first.accuracy("NTP")) == 4
    again = run_recall(TINY, [0], arms=("NTP", "MEAP-SFT"))
    assert [run.accuracy for run in again.runs] == [run.accuracy for run in first.runs]


@pytest.mark.slow
def test_run_demo_reports_claims_tables_and_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RecallSettings, "for_scale", classmethod(lambda cls, scale: TINY))
    report = check_demo(demo.run_demo, tmp_path, name="meap")
    assert [claim.method for claim in report.claims] == ["MEAP", "MEAP", "MEAP-SFT", "MEAP-SFT"]
    assert all(0 <= claim.method_value <= 1 for claim in report.claims)
    thirds = report.table("Retrieval accuracy by depth third")
    assert thirds.column("arm") == ["NTP", "MEAP", "SFT", "MEAP-SFT"]
    for arm in ("NTP", "MEAP", "SFT", "MEAP-SFT"):
        assert 0 <= thirds.row(arm)["all depths"] <= 1
    assert report.table("Retrieval accuracy at each depth").row("MEAP")["4"] >= 0
    assert len(report.plots) == 2
