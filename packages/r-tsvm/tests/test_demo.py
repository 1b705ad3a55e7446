"""The synthetic tasks, the experiment's sparse-layer helpers and a miniature run of the demo."""

from __future__ import annotations

import copy

import pytest
import torch

from paperpack.core.testing.contracts import check_demo
from paperpack.r_tsvm import demo, merge_tensors, synthetic
from paperpack.r_tsvm.experiment import (
    SPARSE_KEY,
    SPARSE_MERGES,
    ExperimentSettings,
    kept_ranks,
    masked_gradient,
    update_mask,
)
from paperpack.r_tsvm.methods._common import numerical_rank


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


def test_update_mask_holds_the_requested_fraction_of_entries():
    mask = update_mask((64, 256), 0.1, seed=3)
    assert mask.dtype == torch.bool and mask.shape == (64, 256)
    assert int(mask.sum()) == int(0.1 * 64 * 256)
    assert torch.equal(mask, update_mask((64, 256), 0.1, seed=3))
    assert not torch.equal(mask, update_mask((64, 256), 0.1, seed=4))
    assert not update_mask((8, 8), 0.0, seed=0).any()


def test_masked_gradient_leaves_the_layer_sparse_and_is_removed_afterwards(tiny_lm):
    model, tokenizer = tiny_lm
    model = copy.deepcopy(model)
    key = SPARSE_KEY
    before = model.state_dict()[key].clone()
    mask = update_mask(before.shape, 0.1, seed=0)
    batch = tokenizer(["help river apple river = river"] * 4, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)

    def step():
        optimizer.zero_grad()
        model(**batch, labels=batch["input_ids"]).loss.backward()
        optimizer.step()

    with masked_gradient(model, key, mask):
        for _ in range(3):
            step()
    delta = model.state_dict()[key] - before
    assert torch.count_nonzero(delta[~mask]) == 0
    assert torch.count_nonzero(delta[mask]) > 0.9 * mask.sum()
    # The task matrix is sparse, but not low-rank: the entry-sparsity rule sees it, numerical rank does not.
    assert numerical_rank(torch.linalg.svdvals(delta), delta.shape) == [min(delta.shape)]
    frozen = model.state_dict()[key].clone()
    step()
    assert torch.count_nonzero((model.state_dict()[key] - frozen)[~mask]) > 0


def test_kept_ranks_cap_each_methods_rank_at_the_tasks_numerical_rank():
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.zeros(12, 12)}
    low_rank = torch.randn(12, 2, generator=g) @ torch.randn(2, 12, generator=g)
    experts = [{"w": low_rank}, {"w": torch.zeros(12, 12)}, {"w": torch.randn(12, 12, generator=g)}]
    fixed = kept_ranks(base, experts, "w", "tsv_m", {})
    # k_cap = 12 // 3 = 4; s_p = (0 + 1 + 0) / 3, so the rule keeps round(4 * 2 / 3) = 3 per task.
    adaptive = kept_ranks(base, experts, "w", "r_tsvm", {"rank_mode": "sparsity"})
    assert fixed == [2, 0, 4]
    assert kept_ranks(base, experts, "w", "r_tsvm", {"rank_mode": "fixed"}) == fixed
    assert adaptive == [2, 0, 3]
    # The merged matrix has exactly as many directions as the triplets counted.
    tensors = [e["w"] for e in experts]
    for kept, merged in [
        (fixed, merge_tensors("tsv_m", base["w"], tensors, key="w")),
        (adaptive, merge_tensors("r_tsvm", base["w"], tensors, key="w", rank_mode="sparsity")),
    ]:
        assert numerical_rank(torch.linalg.svdvals(merged), merged.shape) == [sum(kept)]


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, monkeypatch):
    tiny = ExperimentSettings(pretrain_steps=4, expert_steps=2, num_train=64, num_eval=16, grid=(1.0,))
    monkeypatch.setattr(demo, "QUICK", tiny)
    report = check_demo(demo.run_demo, tmp_path, name="r-tsvm")
    assert len(report.claims) == 6
    # The planted-outlier claim states whether the outliers hurt TSV-M at all.
    planted = report.claim("R-TSVM's outlier handling helps when outliers are planted")
    assert "TSV-M (" in planted.note and any(planted.note in note for note in report.notes)
    clean = report.table("Clean experts")
    assert {"tsv_m", "r_tsvm", "data mixture (uniform)", "fisher", "regmean"} <= set(clean.column("model"))
    assert clean.row("base model")["scale (per seed)"] == "-"
    assert clean.row("r_tsvm")["scale (per seed)"] == "1"
    assert report.table("One layer of the honest expert").row("masked 10 %: tsv_m")["mean (per seed)"]
    # The sparse-layer round: the honest task matrix is 90 % zeros but of full rank, so TSV-M keeps its whole
    # budget of every task there while the adaptive rule keeps less, of every task.
    ranks = {record["merge"]: record for record in report.table("Sparse-layer round").records()}
    assert list(ranks) == list(SPARSE_MERGES)
    assert ranks["tsv_m"]["zeros in the honest task matrix (per seed)"] == "0.900"
    kept = "kept per task (seed mean)"
    assert ranks["tsv_m"][kept] == ranks["r_tsvm (rank fixed)"][kept] == "21/21/21"
    adaptive = [int(k) for k in ranks["r_tsvm (adaptive on the sparse layer only)"][kept].split("/")]
    assert len(set(adaptive)) == 1 and adaptive[0] < 21
    assert report.claim("Sparsity-adaptive rank no worse").held is None
