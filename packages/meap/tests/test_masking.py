"""mask_inputs / sample_mask against a slow, literal reference, plus the mask statistics."""

from __future__ import annotations

import pytest
import torch

from paperpack.core.errors import ConfigError
from paperpack.meap import mask_inputs, sample_mask
from paperpack.meap._reference import reference_mask


def random_case(seed: int) -> dict[str, object]:
    rng = torch.Generator().manual_seed(1000 + seed)
    rows = int(torch.randint(1, 6, (1,), generator=rng))
    length = int(torch.randint(1, 70, (1,), generator=rng))
    input_ids = torch.randint(0, 100, (rows, length), generator=rng)
    protected = torch.rand((rows, length), generator=rng) < 0.3 if seed % 2 else None
    segment_ids = torch.cumsum(torch.rand((rows, length), generator=rng) < 0.1, dim=1) if seed % 3 else None
    ratio = [0.05, 0.1, 0.15, 0.29, 0.5, 0.9][seed % 6]
    return {
        "input_ids": input_ids,
        "ratio": ratio,
        "protected": protected,
        "segment_ids": segment_ids,
        "per_row_positions": seed % 4 != 0,
        "keep_last": [2, 1, 0, 3][seed % 4],
        "at_least_one": seed % 5 == 0,
    }


@pytest.mark.parametrize("seed", range(24))
def test_matches_literal_reference(seed: int) -> None:
    case = random_case(seed)
    fast = sample_mask(generator=torch.Generator().manual_seed(seed), **case)  # type: ignore[arg-type]
    slow = reference_mask(generator=torch.Generator().manual_seed(seed), **case)  # type: ignore[arg-type]
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("seed", range(12))
def test_padded_rows_match_literal_reference(seed: int) -> None:
    # Unpacked rows of different lengths, as the collators build them: padding is protected and is its own
    # run, so each row has one sequence to mask (the draw's per-row top-k route; packed rows above take the
    # per-sequence sort).
    rng = torch.Generator().manual_seed(2000 + seed)
    rows, width = (
        int(torch.randint(1, 9, (1,), generator=rng)),
        int(torch.randint(2, 300, (1,), generator=rng)),
    )
    lengths = torch.randint(1, width + 1, (rows,), generator=rng)
    padding = torch.arange(width).unsqueeze(0) >= lengths.unsqueeze(1)
    case: dict[str, object] = {
        "input_ids": torch.randint(0, 100, (rows, width), generator=rng),
        "ratio": [0.1, 0.15, 0.5, 0.9][seed % 4],
        "protected": padding | (torch.rand((rows, width), generator=rng) < 0.1),
        "segment_ids": padding.long(),
        "per_row_positions": seed % 3 != 0,
        "at_least_one": seed % 2 == 0,
    }
    fast = sample_mask(generator=torch.Generator().manual_seed(seed), **case)  # type: ignore[arg-type]
    slow = reference_mask(generator=torch.Generator().manual_seed(seed), **case)  # type: ignore[arg-type]
    assert torch.equal(fast, slow)


def test_exact_count_protected_and_last_positions() -> None:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, 50, (64, 40), generator=generator)
    protected = torch.rand((64, 40), generator=generator) < 0.25
    for _ in range(20):
        mask = sample_mask(input_ids, ratio=0.15, generator=generator, protected=protected)
        eligible = (~protected[:, :-2]).sum(dim=1)
        assert torch.equal(mask.sum(dim=1), (eligible * 15) // 100)
        assert not (mask & protected).any()
        assert not mask[:, -2:].any()


def test_the_last_position_with_a_target_is_never_masked() -> None:
    """Issue 14: with labels = input_ids the last position has no target, and the official code never masks
    the last one that has (it samples from the first L − 1 of its L input positions). The earlier rule kept
    only the last position, so the one before it was masked at the rate P."""
    input_ids = torch.zeros((2000, 20), dtype=torch.long)
    mask = sample_mask(input_ids, ratio=0.15, generator=torch.Generator().manual_seed(3))
    assert not mask[:, -2:].any()
    assert torch.equal(mask.sum(dim=1), torch.full((2000,), 2))  # ⌊0.15 · 18⌋
    assert mask[:, :-2].float().mean(dim=0).min() > 0.05  # every other position is drawn
    sft = sample_mask(input_ids, ratio=0.15, generator=torch.Generator().manual_seed(3), keep_last=1)
    assert not sft[:, -1].any() and sft[:, -2].any()  # the official SFT rule masks every answer position


def test_at_least_one_mask_per_sequence() -> None:
    """The official count ``max(1, int(L·P))``: sequences with fewer than 1/P eligible positions get one mask."""
    segment_ids = torch.tensor([[0] * 5 + [1] * 3 + [2] * 2 + [3] * 40])  # E = 3, 1, 0, 38
    input_ids = torch.arange(50).unsqueeze(0)
    counts = {}
    for rule in (False, True):
        mask = sample_mask(
            input_ids, ratio=0.15, generator=torch.Generator().manual_seed(0), segment_ids=segment_ids,
            at_least_one=rule,
        )[0]  # fmt: skip
        counts[rule] = [int(mask[a:b].sum()) for a, b in ((0, 5), (5, 8), (8, 10), (10, 50))]
    assert counts[False] == [0, 0, 0, 5]
    assert counts[True] == [1, 1, 0, 5]  # the same where ⌊P·E⌋ >= 1; nothing where nothing is eligible


def test_segments_get_their_own_count_and_keep_their_last_tokens() -> None:
    segment_ids = torch.tensor([[0] * 12 + [1] * 22 + [2] * 7])
    input_ids = torch.arange(41).unsqueeze(0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        mask = sample_mask(input_ids, ratio=0.2, generator=generator, segment_ids=segment_ids)[0]
        assert [int(mask[:12].sum()), int(mask[12:34].sum()), int(mask[34:].sum())] == [2, 4, 1]
        assert not mask[[10, 11, 32, 33, 39, 40]].any()


def test_realized_ratio_over_many_rows() -> None:
    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(100, 400, (500,), generator=generator)
    width = int(lengths.max())
    padding = torch.arange(width).unsqueeze(0) >= lengths.unsqueeze(1)
    segment_ids = padding.long()  # padding is its own run, so each row's last real token is a sequence end
    mask = sample_mask(
        torch.zeros((500, width), dtype=torch.long),
        ratio=0.15,
        generator=generator,
        protected=padding,
        segment_ids=segment_ids,
    )
    realized = mask.sum().item() / (lengths - 2).sum().item()
    assert 0.15 - 1 / 100 <= realized <= 0.15  # ⌊P·E⌋ loses less than one token per row
    assert not (mask & padding).any()


def test_positions_are_uniform() -> None:
    generator = torch.Generator().manual_seed(2)
    input_ids = torch.zeros((4000, 22), dtype=torch.long)
    frequency = sample_mask(input_ids, ratio=0.25, generator=generator).float().mean(dim=0)
    assert (frequency[-2:] == 0).all()
    # 5 of 20 eligible positions: each is masked with probability 0.25 (3σ over 4000 rows is 0.02).
    assert torch.allclose(frequency[:-2], torch.full((20,), 0.25), atol=0.025)


def test_ratio_zero_is_plain_ntp_and_input_is_untouched() -> None:
    input_ids = torch.randint(0, 100, (3, 17))
    before = input_ids.clone()
    out = mask_inputs(input_ids, mask_token_id=999, ratio=0.0)
    assert torch.equal(out, before) and out.data_ptr() != input_ids.data_ptr()
    masked = mask_inputs(input_ids, mask_token_id=999, ratio=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(input_ids, before)
    assert int((masked == 999).sum()) == 3 * 7  # ⌊0.5 · 15⌋ per row
    assert torch.equal(masked[masked != 999], input_ids[masked != 999])


def test_seeded_draws_are_reproducible_and_differ_across_rows_and_seeds() -> None:
    input_ids = torch.zeros((8, 64), dtype=torch.long)
    first = sample_mask(input_ids, ratio=0.15, generator=torch.Generator().manual_seed(7))
    again = sample_mask(input_ids, ratio=0.15, generator=torch.Generator().manual_seed(7))
    other = sample_mask(input_ids, ratio=0.15, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert len({tuple(row.tolist()) for row in first}) == 8


def test_shared_pattern_across_rows() -> None:
    input_ids = torch.zeros((6, 64), dtype=torch.long)
    mask = sample_mask(
        input_ids, ratio=0.15, generator=torch.Generator().manual_seed(0), per_row_positions=False
    )
    assert all(torch.equal(row, mask[0]) for row in mask)
    assert int(mask[0].sum()) == 9


def test_one_dimensional_input() -> None:
    out = mask_inputs(
        torch.arange(1, 42), mask_token_id=0, ratio=0.1, generator=torch.Generator().manual_seed(0)
    )
    assert out.shape == (41,) and int((out == 0).sum()) == 3 and out[-2:].tolist() == [40, 41]


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1, float("nan"), True, "0.1"])
def test_bad_ratio(ratio: object) -> None:
    with pytest.raises(ConfigError, match="`ratio`"):
        mask_inputs(torch.zeros((1, 4), dtype=torch.long), mask_token_id=0, ratio=ratio)  # type: ignore[arg-type]


def test_bad_tensors() -> None:
    ids = torch.zeros((2, 5), dtype=torch.long)
    with pytest.raises(TypeError, match="`input_ids` must be a torch.Tensor"):
        sample_mask([[1, 2]], ratio=0.1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="`input_ids` must be 1-D or 2-D"):
        sample_mask(torch.zeros((1, 2, 3), dtype=torch.long), ratio=0.1)
    with pytest.raises(TypeError, match="`protected` must be a boolean tensor"):
        sample_mask(ids, ratio=0.1, protected=torch.zeros((2, 5)))
    with pytest.raises(ConfigError, match=r"`protected` must have the shape of `input_ids` \(2, 5\)"):
        sample_mask(ids, ratio=0.1, protected=torch.zeros((2, 4), dtype=torch.bool))
    with pytest.raises(TypeError, match="`segment_ids` must be an integer tensor"):
        sample_mask(ids, ratio=0.1, segment_ids=torch.zeros((2, 5)))
    with pytest.raises(TypeError, match="`generator`"):
        sample_mask(ids, ratio=0.1, generator=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="`mask_token_id` must be >= 0"):
        mask_inputs(ids, mask_token_id=-1, ratio=0.1)
    with pytest.raises(ConfigError, match="`keep_last` must be >= 0"):
        sample_mask(ids, ratio=0.1, keep_last=-1)
    with pytest.raises(TypeError, match="`at_least_one` must be a bool"):
        sample_mask(ids, ratio=0.1, at_least_one=1)  # type: ignore[arg-type]


@pytest.mark.gpu
def test_cuda_input_matches_cpu() -> None:
    input_ids = torch.randint(0, 100, (4, 300))
    protected = input_ids < 10
    cpu = sample_mask(input_ids, ratio=0.15, generator=torch.Generator().manual_seed(0), protected=protected)
    cuda = sample_mask(
        input_ids.cuda(), ratio=0.15, generator=torch.Generator().manual_seed(0), protected=protected.cuda()
    )
    assert cuda.device.type == "cuda" and torch.equal(cuda.cpu(), cpu)
    on_device = sample_mask(
        input_ids.cuda(),
        ratio=0.15,
        generator=torch.Generator("cuda").manual_seed(0),
        protected=protected.cuda(),
    )
    assert torch.equal(on_device.sum(dim=1).cpu(), cpu.sum(dim=1))
