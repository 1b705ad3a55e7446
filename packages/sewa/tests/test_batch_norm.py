"""Batch norm: the running statistics are averaged with the weights, and re-estimated as torch's update_bn does."""

from __future__ import annotations

import copy
import functools
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn
from transformers import Trainer

from paperpack.core.testing.contracts import assert_state_dicts_equal
from paperpack.sewa import SeWACallback, SeWAConfig
from paperpack.sewa.batch_norm import update_batch_norm
from paperpack.sewa.callback import snapshot_state
from paperpack.sewa.loss import selection_batches

STATISTICS = ("body.1.running_mean", "body.1.running_var")


@functools.cache
def _script() -> ModuleType:
    """ddp_train.py, which defines the batch-norm network and its data for this file and the DDP test."""
    spec = importlib.util.spec_from_file_location("sewa_ddp_train", Path(__file__).with_name("ddp_train.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BatchNormClassifier = _script().BatchNormClassifier


def _train(folder: Path, callback: SeWACallback) -> tuple[nn.Module, Trainer]:
    trainer = _script().batch_norm_trainer(folder, callback, max_steps=10)
    trainer.train()
    return trainer.model, trainer


def test_update_batch_norm_matches_torch_update_bn() -> None:
    generator = torch.Generator().manual_seed(2)
    inputs = [5.0 + 2.0 * torch.randn(8, 6, generator=generator) for _ in range(6)]
    model = BatchNormClassifier()
    model.body[1].momentum = 0.3
    model.eval()
    expected = copy.deepcopy(model)
    update_bn(inputs, expected)
    assert update_batch_norm(model, inputs) == 6
    assert_state_dicts_equal(model.state_dict(), expected.state_dict())
    assert model.body[1].momentum == 0.3 and not model.training  # restored
    # The Trainer's batches (keyword arguments) give the same statistics.
    keyword = BatchNormClassifier()
    update_batch_norm(keyword, [{"x": x} for x in inputs])
    assert_state_dicts_equal(keyword.state_dict(), expected.state_dict())
    # A model without batch norm is not run at all.
    assert update_batch_norm(nn.Linear(6, 2), inputs) == 0


def test_snapshots_hold_the_statistics_and_the_mean_averages_them(tmp_path: Path) -> None:
    callback = SeWACallback(SeWAConfig(k=2, iterations=5, mc_samples=2), window=4, snapshot_every=2)
    model, _ = _train(tmp_path, callback)
    snapshots = callback.store.load()
    assert set(snapshots[0]) == set(model.state_dict())  # weights, running statistics and the counter
    result = callback.result
    assert result is not None
    for key in STATISTICS:
        expected = torch.stack([snapshots[i][key] for i in result.indices]).mean(0)
        torch.testing.assert_close(model.state_dict()[key], expected, rtol=0, atol=0)
        assert not torch.equal(model.state_dict()[key], snapshots[-1][key])  # not the last iterate's
    counter = "body.1.num_batches_tracked"
    assert int(model.state_dict()[counter]) == int(snapshots[max(result.indices)][counter])
    assert_state_dicts_equal(snapshot_state(model), result.state_dict)


def test_update_bn_re_estimates_the_statistics_of_the_average(tmp_path: Path) -> None:
    config = SeWAConfig(k=2, iterations=5, mc_samples=2)
    callback = SeWACallback(config, window=4, snapshot_every=2, update_bn=True)
    model, trainer = _train(tmp_path, callback)
    result = callback.result
    assert result is not None
    # The weights are the mean of the selected snapshots; the statistics are those of that mean on one pass
    # over the training data, in the order the seed fixes.
    expected = BatchNormClassifier()
    expected.load_state_dict(result.state_dict)
    batches = selection_batches(trainer.get_train_dataloader(), 8, seed=config.seed, passes=1)
    assert update_batch_norm(expected, batches) == 12  # 96 examples in batches of 8
    assert_state_dicts_equal(model.state_dict(), expected.state_dict())
    for key in STATISTICS:
        assert not torch.equal(model.state_dict()[key], result.state_dict[key])


def test_update_bn_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match=r"`update_bn` must be a bool, got 'yes'"):
        SeWACallback(update_bn="yes")  # type: ignore[arg-type]
