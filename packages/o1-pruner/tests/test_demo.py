"""The demo's task and arms on a miniature run: every arm reported, the plot written, claims well formed."""

from __future__ import annotations

import copy
import dataclasses
import random

from paperpack.core.testing.contracts import assert_parameters_changed, check_demo, snapshot_parameters
from paperpack.o1_pruner import demo
from paperpack.o1_pruner.experiment import ARMS, ExperimentSettings, _dpo, _pick, addition_problem, run_seed

TINY = ExperimentSettings(
    sft_problems=64, sft_steps=4, train_problems=4, eval_problems=4, num_presamples=2, epochs=1
)


def test_addition_traces_add_up_and_checks_pad_them() -> None:
    rng = random.Random(3)
    for _ in range(50):
        problem = addition_problem(rng, terms=4, max_checks=3, slip=0.0, jump=0.5)
        numbers = [int(n) for n in problem["prompt"].split()[1:-1]]
        assert problem["answer"] == str(sum(numbers))
        assert problem["trace"].endswith(f"answer {sum(numbers)}")
        assert problem["trace"].count("check") <= 3 * 3
        assert problem["trace"].count("s=") <= 4
    slipped = [addition_problem(random.Random(s), terms=5, max_checks=3, slip=1.0) for s in range(20)]
    assert any(not p["trace"].endswith(f"answer {p['answer']}") for p in slipped)  # a slip changes the answer
    jumps = [addition_problem(random.Random(s), terms=3, jump=1.0)["trace"] for s in range(5)]
    assert all(t.count("s=") == 2 and t.count("+") == 2 for t in jumps)  # s=a ; s=a+b+c=...


def test_baseline_data_picks_the_shortest_correct_samples() -> None:
    line = {
        "index": 0,
        "prompt": "add 1 2 =",
        "prompt_ids": [1, 2],
        "samples": [
            {"text": "long", "token_ids": [5] * 9, "correct": True},
            {"text": "short", "token_ids": [5] * 3, "correct": True},
            {"text": "wrong", "token_ids": [5] * 2, "correct": False},
            {"text": "mid", "token_ids": [5] * 5, "correct": True},
        ],
    }
    sft, pairs = _pick([line])
    assert [len(r["completion_ids"]) for r in sft] == [3, 5]
    assert pairs == [{"prompt": "add 1 2 =", "chosen": "short", "rejected": "long"}]


def test_demo_reports_every_arm(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(demo, "QUICK", TINY)
    report = check_demo(demo.run_demo, tmp_path, name="o1-pruner")
    table = report.table("greedy evaluation")
    assert [record["arm"] for record in table.records()] == list(ARMS)
    assert report.claim("O1-Pruner cuts the mean length").baseline_value > 0  # the reference's mean length
    assert report.claim("a smaller λ shortens more").held in (True, False)


def test_every_arm_trained_at_learning_rate_zero_is_the_reference() -> None:
    # The training path shared by the arms (data formatting, collators, trainers, stored reference
    # log-probabilities, evaluation) changes nothing by itself: what moves an arm is its optimizer steps.
    result = run_seed(0, dataclasses.replace(TINY, learning_rate=0.0, sft_steps=30, sft_learning_rate=1e-2))
    assert result.sft_samples > 0  # the arms had data to train on
    reference = result.arms["reference"]
    for arm in ARMS:
        assert result.arms[arm] == reference, arm


def test_dpo_baseline_trains_with_trl(tiny_lm, tmp_path) -> None:
    model, tokenizer = tiny_lm
    model = copy.deepcopy(model)
    before = snapshot_parameters(model)
    pairs = [
        {"prompt": "add 1 2 =", "chosen": " s=1 ; answer 3", "rejected": " s=1 ; check 1 ; answer 3"}
    ] * 4
    _dpo(model, tokenizer, pairs, tmp_path, max_steps=1, learning_rate=1e-3, seed=0)
    assert_parameters_changed(before, model)
