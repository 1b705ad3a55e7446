"""The demo through the core's runner (its contract: claims, tables, plots, nothing written outside), on sizes
far below the quick scale; and the experiment's pieces (the tasks, the storage of each arm)."""

from __future__ import annotations

import pytest

from paperpack.core.testing.contracts import check_demo
from paperpack.merge_router import demo
from paperpack.merge_router.experiment import (
    DEFAULT_MEDIATORS,
    TASK_NAMES,
    density_arm,
    make_examples,
    random_arm,
)


def test_tasks_have_distinct_formats_and_one_digit_answers():
    for task in TASK_NAMES:
        examples = make_examples(task, 20, seed=0)
        assert examples == make_examples(task, 20, seed=0)
        assert all(answer.startswith(" ") and answer.strip().isdigit() for _, answer in examples)
    first_words = {make_examples(task, 1, seed=0)[0][0].split()[0] for task in TASK_NAMES}
    assert len(first_words) == len(TASK_NAMES)
    prompt, answer = make_examples("successor", 1, seed=3)[0]
    assert int(answer) == (int(prompt.split(":")[1].split()[0]) + 1) % 10
    with pytest.raises(ValueError, match="unknown task"):
        make_examples("sort", 1, seed=0)
    for task in TASK_NAMES:  # out of distribution: the same answers, another task's marker words
        ood = make_examples(task, 20, seed=0, ood=True)
        assert all(answer.strip().isdigit() for _, answer in ood)
        assert not {p.split()[0] for p, _ in ood} & {p.split()[0] for p, _ in make_examples(task, 20, 0)}
    prompt, answer = make_examples("first", 1, seed=5, ood=True)[0]
    assert answer == " " + prompt.split("[")[1].split()[0]


def test_demo_contract(tmp_path, monkeypatch):
    tiny = {"pretrain_steps": 3, "finetune_steps": 3, "train_examples": 64, "test_examples": 8}
    monkeypatch.setitem(demo.SCALES, "quick", tiny)
    report = check_demo(demo.run_demo, tmp_path, name="merge-router")
    table = report.table("exact-match accuracy")
    assert table.column("arm") == [
        *(f"{task} expert alone" for task in TASK_NAMES),
        "oracle ensemble (4 experts)",
        "plain averaging",
        "task arithmetic",
        "TIES",
        "TSV-M",
        *DEFAULT_MEDIATORS,
        density_arm(0.05),
        density_arm(0.3),
        random_arm(),
    ]
    assert table.row("oracle ensemble (4 experts)")["storage / one model"] == 4
    assert table.row("plain averaging")["storage / one model"] == 1
    assert 1 < table.row(demo.MEDIATOR)["storage / one model"] < 4
    assert report.claim("Mediator's storage").held is True
    assert report.claim("routing the highest-conflict blocks").held is not None
    ood = report.table("out-of-distribution prompts")
    assert [row[0] for row in ood.rows] == [
        "soft (top-k mix below the confidence threshold)",
        "hard (top-1 expert always)",
        "oracle (each task's expert alone)",
    ]
    routed = report.table("units routed").rows
    assert sum(row[0].startswith(random_arm()) for row in routed) == 3  # three random draws
    assert all("norm" not in row[1] for row in routed)  # only decoder blocks are routed by default
    assert not list(tmp_path.rglob("models"))  # the work folder is removed
