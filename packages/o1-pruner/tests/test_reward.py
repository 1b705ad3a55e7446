"""The reward and the weights on hand-computed cases and against the literal reference; AES on the paper's table."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from paperpack.core.errors import ConfigError
from paperpack.o1_pruner import aes, harmonized_weights, length_harmonizing_reward
from paperpack.o1_pruner._reference import reference_aes, reference_reward, reference_weights
from paperpack.o1_pruner.reward import reference_statistics


def test_reward_on_hand_computed_cases() -> None:
    # K = 4 samples: lengths 100, 200, 300, 400 (L_ref = 250), 3 of 4 correct (A_ref = 0.75), λ = 2.
    ref_length, ref_accuracy = reference_statistics([100, 200, 300, 400], [True, True, False, True])
    assert (ref_length, ref_accuracy) == (250.0, 0.75)
    rewards = length_harmonizing_reward([100, 300], [True, False], ref_length, ref_accuracy, lam=2.0)
    # 250/100 − 1 + 2(1 − 0.75) = 2.0 ; 250/300 − 1 + 2(0 − 0.75) = −1/6 − 1.5
    assert rewards == pytest.approx([2.0, -1.0 / 6.0 - 1.5])
    # λ = 0: the length term alone; a sample of the mean length earns 0.
    assert length_harmonizing_reward([250], [False], 250.0, 0.75, lam=0.0) == [0.0]
    # A hard problem (A_ref = 0.1): a correct sample earns almost λ even when long.
    (hard,) = length_harmonizing_reward([500], [True], 250.0, 0.1, lam=5.0)
    assert hard == pytest.approx(-0.5 + 4.5)


def test_reward_matches_the_literal_reference() -> None:
    rng = random.Random(0)
    for _ in range(50):
        k = rng.randint(2, 16)
        lengths = [rng.randint(1, 900) for _ in range(k)]
        correct = [rng.random() < 0.6 for _ in range(k)]
        lam = rng.choice([0.0, 1.0, 2.0, 5.0])
        ref_length, ref_accuracy = reference_statistics(lengths, correct)
        fast = length_harmonizing_reward(lengths, correct, ref_length, ref_accuracy, lam=lam)
        slow = [reference_reward(n, c, lengths, correct, lam) for n, c in zip(lengths, correct, strict=True)]
        assert fast == pytest.approx(slow, rel=1e-12, abs=1e-12)


def test_weights_clip_bounds_and_zscore() -> None:
    assert harmonized_weights([-9.0, -2.0, 0.5, 4.0, 7.0], clip=(-2, 4), normalize="none") == [
        -2,
        -2,
        0.5,
        4,
        4,
    ]
    rng = random.Random(1)
    rewards = [rng.uniform(-6, 9) for _ in range(101)]
    weights = harmonized_weights(rewards, clip=(-2.0, 4.0))
    assert statistics.fmean(weights) == pytest.approx(0.0, abs=1e-12)
    assert statistics.pstdev(weights) == pytest.approx(1.0, abs=1e-12)
    assert weights == pytest.approx(reference_weights(rewards, -2.0, 4.0, zscore=True), abs=1e-12)
    # The order of the samples is kept: the z-score is monotone in the clipped reward.
    clipped = harmonized_weights(rewards, clip=(-2.0, 4.0), normalize="none")
    assert sorted(range(101), key=clipped.__getitem__) == sorted(range(101), key=weights.__getitem__)
    assert harmonized_weights([3.0, 3.0], clip=None) == [0.0, 0.0]  # no spread: nothing to prefer


def test_aes_on_the_paper_table_cells() -> None:
    # Marco-o1-7B rows of the paper's table: (acc, length) against the baseline, and the reported AES.
    cells = [
        ((81.7, 447), (89.2, 530), 0.41),  # GSM8K, Fast-solving Prompt: an accuracy drop
        ((77.5, 657), (73.8, 1156), 0.58),  # MATH, O1-Pruner
        ((71.8, 761), (73.8, 1156), 0.42),  # MATH, DPO: a drop
        ((91.4, 343), (89.2, 530), 0.43),  # GSM8K, O1-Pruner
        ((61.6, 664), (57.1, 1112), 0.64),  # GaoKao, O1-Pruner
    ]
    for (acc, length), (acc_base, length_base), reported in cells:
        table = aes(acc, length, acc_base, length_base, sign_agnostic=True)
        assert round(table, 2) == pytest.approx(reported, abs=0.011)
        formula = aes(acc, length, acc_base, length_base)
        for sign_agnostic, value in ((True, table), (False, formula)):
            literal = reference_aes(
                acc,
                length,
                acc_base,
                length_base,
                alpha=1.0,
                beta=3.0,
                gamma=5.0,
                sign_agnostic=sign_agnostic,
            )
            assert value == pytest.approx(literal, rel=1e-12)
        if acc >= acc_base:
            assert formula == table
    # The note's worked cell: with γ = 5 the formula gives ≈ −0.26 where the table reports 0.41.
    assert aes(81.7, 447, 89.2, 530) == pytest.approx(0.1566 - 5 * 7.5 / 89.2, abs=1e-3)
    assert aes(81.7, 447, 89.2, 530, alpha=1, beta=5, gamma=10) < aes(81.7, 447, 89.2, 530)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: length_harmonizing_reward([10], [True], 10.0, 0.5, lam=-1.0), r"`lam` \(λ\) must be"),
        (lambda: length_harmonizing_reward([0], [True], 10.0, 0.5, lam=1.0), "token counts >= 1"),
        (lambda: length_harmonizing_reward([5, 6], [True], 10.0, 0.5, lam=1.0), "differ in length"),
        (lambda: length_harmonizing_reward([5], [True], 0.0, 0.5, lam=1.0), r"`ref_length` \(L_ref\)"),
        (lambda: length_harmonizing_reward([5], [True], 5.0, 1.5, lam=1.0), r"`ref_accuracy` \(A_ref\)"),
        (lambda: harmonized_weights([], clip=None), "empty"),
        (lambda: harmonized_weights([1.0, math.nan]), "finite"),
        (lambda: harmonized_weights([1.0], clip=(4, -2)), "low < high"),
        (lambda: harmonized_weights([1.0], normalize="minmax"), "'zscore' or 'none'"),
        (lambda: aes(0.5, 10, 0.0, 10), "`acc_base` must be a finite number > 0"),
        (lambda: aes(0.5, 10, 0.5, 10, gamma=-1), "`gamma` must be >= 0"),
    ],
)
def test_bad_input_names_the_argument(call, match) -> None:
    with pytest.raises(ConfigError, match=match):
        call()
