import numpy as np
import pytest

from paperpack.core.errors import ConfigError
from paperpack.ma_osma import TrackingEnv, TrackingObjective


def _play(env, seed, rounds=20, policy=None):
    env.reset(seed)
    rng = np.random.default_rng(seed)
    history = []
    for _ in range(rounds):
        actions = (
            [block[int(rng.integers(len(block)))] for block in env.blocks] if policy is None else policy(env)
        )
        step = env.step(actions)
        history.append((env.agent_positions.copy(), env.target_positions.copy(), step.utility, step.covered))
    return history


def test_blocks_partition_the_ground_set():
    env = TrackingEnv(4, 3)
    assert env.blocks[2] == list(range(18, 27))
    assert sorted(a for block in env.blocks for a in block) == list(range(env.n_ground))


def test_reset_is_seeded_and_steps_reproducible():
    env = TrackingEnv(5, 7, "mixed")
    first, second, other = _play(env, 3), _play(env, 3), _play(env, 4)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert a[2:] == b[2:]
    assert not np.array_equal(first[-1][1], other[-1][1])


def test_step_reveals_the_tracking_objective_of_the_round():
    env = TrackingEnv(3, 4, "polyline")
    env.reset(0)
    before = env.agent_positions.copy()
    actions = [1, 9 + 3, 18]
    step = env.step(actions)
    expected = TrackingObjective(
        before, env.moves, env.target_positions, step=env.agent_speed, offset=env.offset
    )
    np.testing.assert_allclose(step.objective.similarity, expected.similarity)
    assert step.utility == pytest.approx(expected.value(actions))
    np.testing.assert_allclose(env.agent_positions, np.clip(expected.destinations[actions], 0, env.arena))
    distance = np.linalg.norm(env.agent_positions[:, None] - env.target_positions[None], axis=2)
    assert step.covered == int((distance.min(axis=0) <= env.cover_radius).sum())


def test_everything_stays_in_the_arena():
    env = TrackingEnv(4, 9, "mixed", arena=10.0, target_speed=3.0, noise=4.0)
    for agents, targets, *_ in _play(env, 0, rounds=60):
        assert np.all((agents >= 0) & (agents <= 10.0))
        assert np.all((targets >= 0) & (targets <= 10.0))


def test_non_reactive_targets_ignore_the_agents():
    env = TrackingEnv(3, 6, "mixed")
    stay = _play(env, 1, policy=lambda e: [block[0] for block in e.blocks])
    wander = _play(env, 1)
    kinds = np.array(env.kinds)
    passive = kinds != "adversarial"
    np.testing.assert_allclose(stay[-1][1][passive], wander[-1][1][passive])


def test_adversarial_targets_flee_from_a_close_agent():
    env = TrackingEnv(1, 1, "adversarial", flee_radius=5.0, flee_speed=1.2, turn_every=1000)
    env.reset(0)
    env.target_positions = np.array([[25.0, 25.0]])
    env.agent_positions = np.array([[23.0, 25.0]])
    env.step([0])
    np.testing.assert_allclose(env.target_positions, [[26.2, 25.0]])


@pytest.mark.parametrize(
    ("mix", "expected"),
    [
        ((1, 1, 1), {"random": 4, "adversarial": 3, "polyline": 3}),
        ((8, 1, 1), {"random": 8, "adversarial": 1, "polyline": 1}),
    ],
)
def test_mixed_motion_proportions(mix, expected):
    env = TrackingEnv(2, 10, "mixed", motion_mix=mix)
    assert {kind: env.kinds.count(kind) for kind in expected} == expected


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_agents": 0}, "n_agents"),
        ({"motion": "brownian"}, "motion"),
        ({"motion_mix": (1, 1)}, "motion_mix"),
        ({"motion_mix": (0, 0, 0)}, "motion_mix"),
        ({"arena": -1.0}, "arena"),
        ({"noise": -0.1}, "noise"),
        ({"turn_every": 0}, "turn_every"),
    ],
)
def test_bad_environment_arguments(kwargs, match):
    arguments = {"n_agents": 2, "n_targets": 3, **kwargs}
    with pytest.raises(ConfigError, match=match):
        TrackingEnv(**arguments)


def test_bad_steps():
    env = TrackingEnv(2, 3)
    with pytest.raises(ConfigError, match="reset"):
        env.step([0, 9])
    env.reset(0)
    with pytest.raises(ConfigError, match="one action per agent"):
        env.step([0, 1])
    with pytest.raises(ConfigError, match="one action per agent"):
        env.step([0])
    with pytest.raises(ConfigError, match="actions"):
        env.step([0, 18])
