"""length_harmonizing_reward_func: the reward on hand cases and in a short real trl.GRPOTrainer run."""

from __future__ import annotations

import copy

import pytest
from datasets import Dataset

from paperpack.core.errors import ConfigError
from paperpack.core.testing.contracts import assert_parameters_changed, snapshot_parameters
from paperpack.o1_pruner import last_number_grader, length_harmonizing_reward_func


def test_reward_on_hand_cases() -> None:
    reward = length_harmonizing_reward_func(last_number_grader, lam=2.0)
    values = reward(
        prompts=["1+1=", "2+2="],
        completions=["so 2", "so 5"],
        completion_ids=[[5, 6], [5, 6, 7, 8, 9, 10, 11, 12]],
        answer=["2", "4"],
        ref_length=[4.0, 4.0],
        ref_accuracy=[0.5, 0.25],
    )
    assert values == pytest.approx([4 / 2 - 1 + 2 * 0.5, 4 / 8 - 1 - 2 * 0.25])
    clipped = length_harmonizing_reward_func(last_number_grader, lam=2.0, clip=(-1.0, 1.5))
    assert clipped(
        prompts=["p"],
        completions=[[{"role": "assistant", "content": "2"}]],
        completion_ids=[[5]],
        answer=["2"],
        ref_length=[4.0],
        ref_accuracy=[0.5],
    ) == [1.5]
    assert reward.__name__ == "length_harmonizing_reward"
    with pytest.raises(ConfigError, match="needs the data set columns ref_length, ref_accuracy"):
        reward(prompts=["p"], completions=["2"], completion_ids=[[5]], answer=["2"])
    with pytest.raises(ConfigError, match="`lam`"):
        length_harmonizing_reward_func(last_number_grader, lam=-1.0)


def test_short_grpo_run_uses_the_reward(tiny_lm, tmp_path) -> None:
    from trl import GRPOConfig, GRPOTrainer

    model, tokenizer = tiny_lm
    model = copy.deepcopy(model)
    before = snapshot_parameters(model)
    dataset = Dataset.from_list(
        [
            {
                "prompt": f"Q: what is {i} + 1? A:",
                "answer": str(i + 1),
                "ref_length": 10.0,
                "ref_accuracy": 0.25,
            }
            for i in range(8)
        ]
    )
    args = GRPOConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=10,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        bf16=False,
        use_cpu=True,
        report_to="none",
        seed=0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[length_harmonizing_reward_func(last_number_grader, lam=2.0)],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.train()
    logged = [e for e in trainer.state.log_history if "rewards/length_harmonizing_reward/mean" in e]
    assert len(logged) == 2
    # Untrained completions are wrong (A = 0) and at most 10 tokens: R = 10/L − 1 − 2·0.25 >= −0.5.
    assert all(e["rewards/length_harmonizing_reward/mean"] >= -0.5 - 1e-6 for e in logged)
    assert_parameters_changed(before, model)
