"""The synthetic tasks and a miniature run of the demo."""

from __future__ import annotations

import pytest

from paperpack.r_tsvm import synthetic


@pytest.mark.parametrize("task", synthetic.TASKS)
def test_tasks_have_disjoint_held_out_prompts_and_one_token_answers(task, tiny_lm):
    _, tokenizer = tiny_lm
    data = synthetic.make_task(task, num_train=200, num_eval=40, seed=3)
    train = {e["prompt"] for e in data.train}
    validation = {e["prompt"] for e in data.validation}
    test = {e["prompt"] for e in data.test}
    assert len(validation) == len(test) == 40
    assert not (train & validation) and not (train & test) and not (validation & test)
    encoded = synthetic.encode(tokenizer, data.test)
    assert encoded["answer"].shape == (40,)
    assert data == synthetic.make_task(task, num_train=200, num_eval=40, seed=3)


def test_task_rules():
    data = synthetic.make_task("harmless", num_train=100, num_eval=10, seed=0)
    for example in data.train:
        words = example["prompt"].split()[1:4]
        forbidden = any(w in synthetic.FORBIDDEN for w in words)
        assert example["completion"] == (" no" if forbidden else f" {words[0]}")


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, monkeypatch):
    from paperpack.core.demo import DemoContext
    from paperpack.r_tsvm import demo

    tiny = demo._Budget(seeds=1, pretrain_steps=4, expert_steps=2, num_train=64, num_eval=16, grid=(1.0,))
    monkeypatch.setattr(demo, "_QUICK", tiny)
    report = demo.run_demo(DemoContext(name="r-tsvm", output_dir=tmp_path, quick=True, seed=0))
    assert len(report.claims) == 5
    # The planted-outlier claim states whether the outliers hurt TSV-M at all.
    assert "TSV-M (" in report.claims[1].note and report.claims[1].note in report.notes[-1]
    rows = {row[0] for row in report.tables[0].rows}
    assert {"tsv_m", "r_tsvm", "data mixture (uniform)", "fisher", "regmean"} <= rows
    assert all(plot.is_file() for plot in report.plots)
