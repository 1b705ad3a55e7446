import random

import numpy as np
import pytest
import torch

from paperpack.core.device import MemoryMeter, format_bytes, resolve_device, resolve_dtype, seed_everything
from paperpack.core.errors import ConfigError


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ConfigError, match="`device` must be"):
        resolve_device("tpu-please")
    with pytest.raises(ConfigError, match="`device` must be"):
        resolve_device("meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_resolve_dtype():
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype(torch.float16) is torch.float16
    assert resolve_dtype("auto", device="cpu") is torch.float32
    with pytest.raises(ConfigError, match="`dtype` must be one of"):
        resolve_dtype("float8")
    with pytest.raises(ConfigError, match="floating dtype"):
        resolve_dtype(torch.int64)


def test_seed_everything_is_reproducible():
    seed_everything(3)
    first = (random.random(), np.random.rand(), torch.rand(2))
    seed_everything(3)
    second = (random.random(), np.random.rand(), torch.rand(2))
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="`seed`"):
            seed_everything(bad)


def test_memory_meter_sees_torch_allocations():
    with MemoryMeter("cpu") as meter:
        block = torch.ones(128 * 2**20, dtype=torch.uint8)  # 128 MiB, written
        del block
    assert 120 * 2**20 <= meter.growth_bytes < 400 * 2**20
    assert meter.peak_bytes >= meter.start_bytes
    assert "MiB" in repr(meter)


def test_nested_meters_both_see_the_peak():
    with MemoryMeter("cpu") as outer:
        block = torch.ones(96 * 2**20, dtype=torch.uint8)
        del block
        with MemoryMeter("cpu", interval=0.0005) as inner:
            small = torch.ones(48 * 2**20, dtype=torch.uint8)
            del small
    assert outer.growth_bytes >= 90 * 2**20
    assert inner.growth_bytes >= 40 * 2**20


def test_format_bytes():
    assert format_bytes(12) == "12 B"
    assert format_bytes(3 * 2**20) == "3.0 MiB"
    assert format_bytes(5 * 2**40) == "5.0 TiB"


@pytest.mark.gpu
def test_memory_meter_on_cuda():
    with MemoryMeter("cuda") as meter:
        block = torch.ones(64 * 2**20, dtype=torch.uint8, device="cuda")
        del block
    assert meter.growth_bytes >= 64 * 2**20
