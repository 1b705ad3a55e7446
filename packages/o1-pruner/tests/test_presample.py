"""presample: the weighted training set, resuming without sampling again, the reference's mode, bad input."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from paperpack.core.errors import ConfigError
from paperpack.core.hf import tiny_causal_lm
from paperpack.core.testing.contracts import check_fails_cleanly
from paperpack.o1_pruner import presample
from paperpack.o1_pruner.presampling import reference_log_probs
from paperpack.o1_pruner.reward import length_harmonizing_reward

PROBLEMS = [{"prompt": f"Q: what is {i} + {i + 2}?", "answer": str(2 * i + 2)} for i in range(7)]


def parity_grader(completion: str, answer: str) -> bool:
    """A deterministic grader that marks about half of the samples correct."""
    return len(completion) % 2 == 0


def test_presample_builds_the_weighted_training_set(tiny_lm, make_args, tmp_path: Path) -> None:
    model, tokenizer = tiny_lm
    args = make_args(num_presamples=4, samples_per_problem=2, lam=2.0)
    data = presample(model, tokenizer, PROBLEMS, parity_grader, args, output=tmp_path / "out", progress=False)
    assert data.num_rows == 7 * 2
    assert model.training  # the mode is restored
    lines = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(7))
    for record in data:
        line = lines[record["problem_index"]]
        lengths = [len(s["token_ids"]) for s in line["samples"]]
        correct = [s["correct"] for s in line["samples"]]
        assert len(lengths) == 4 and record["completion_ids"] in [s["token_ids"] for s in line["samples"]]
        assert record["ref_length"] == pytest.approx(statistics.fmean(lengths))
        assert record["ref_accuracy"] == pytest.approx(sum(correct) / 4)
        assert record["length"] == len(record["completion_ids"])
        (expected,) = length_harmonizing_reward(
            [record["length"]], [record["correct"]], record["ref_length"], record["ref_accuracy"], lam=2.0
        )
        assert record["reward"] == pytest.approx(expected)
        assert record["correct"] == parity_grader(record["completion"], record["answer"])
        assert record["prompt_ids"] == line["prompt_ids"] == tokenizer(record["prompt"])["input_ids"]
    # Two different samples per problem (the first two of a shuffle of the K).
    per_problem = {}
    for record in data:
        per_problem.setdefault(record["problem_index"], []).append(record["completion_ids"])
    assert all(len(v) == 2 for v in per_problem.values())
    weights = data["weight"]
    assert statistics.fmean(weights) == pytest.approx(0.0, abs=1e-9)
    assert statistics.pstdev(weights) == pytest.approx(1.0, abs=1e-9)
    saved = [json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert saved == data.to_list()
    # The reference's log-probabilities, taken in the sampling batches, as one sample at a time gives them.
    alone = reference_log_probs(
        model, data["prompt_ids"], data["completion_ids"], batch_size=1, pad_token_id=tokenizer.pad_token_id
    )
    for stored, single in zip(data["ref_logps"], alone, strict=True):
        assert stored == pytest.approx(single, abs=1e-5) and all(v <= 0 for v in stored)


def test_interrupted_presampling_resumes_without_sampling_again(
    tiny_lm, make_args, tmp_path: Path, monkeypatch
) -> None:
    model, tokenizer = tiny_lm
    args = make_args(num_presamples=3, presample_batch_size=2)
    full = presample(
        model, tokenizer, PROBLEMS, parity_grader, args, output=tmp_path / "full", progress=False
    )

    def failing_grader(completion: str, answer: str) -> bool:
        if answer == PROBLEMS[4]["answer"]:
            raise RuntimeError("grader crashed")
        return parity_grader(completion, answer)

    out = tmp_path / "cut"
    with pytest.raises(
        ConfigError, match=r"the grader raised on problem 4 \(answer '10'\), sample 0: RuntimeError"
    ):
        presample(model, tokenizer, PROBLEMS, failing_grader, args, output=out, progress=False)
    assert len((out / "samples.jsonl").read_text().splitlines()) == 4  # batches 0-1 and 2-3 were kept
    assert not (out / "train.jsonl").exists()
    # A cut last line (a crash mid-write) is dropped and that batch sampled again.
    with (out / "samples.jsonl").open("a") as sink:
        sink.write('{"index": 4, "prom')

    import paperpack.o1_pruner.presampling as module

    sampled: list[str] = []
    real = module.sample_completions

    def counting(model, tokenizer, prompts, **kwargs):
        sampled.extend(prompts)
        return real(model, tokenizer, prompts, **kwargs)

    monkeypatch.setattr(module, "sample_completions", counting)
    resumed = presample(model, tokenizer, PROBLEMS, parity_grader, args, output=out, progress=False)
    assert sampled == [p["prompt"] for p in PROBLEMS[4:]]
    assert resumed.to_list() == full.to_list()
    assert (out / "samples.jsonl").read_text() == (tmp_path / "full" / "samples.jsonl").read_text()
    sampled.clear()
    again = presample(model, tokenizer, PROBLEMS, parity_grader, args, output=out, progress=False)
    assert sampled == [] and again.to_list() == full.to_list()
    # Other settings or problems are refused, naming what changed.
    with pytest.raises(ConfigError, match="num_presamples 3 -> 4"):
        presample(
            model,
            tokenizer,
            PROBLEMS,
            parity_grader,
            make_args(num_presamples=4, presample_batch_size=2),
            output=out,
            progress=False,
        )
    with pytest.raises(ConfigError, match="problems_sha256"):
        presample(model, tokenizer, PROBLEMS[:6], parity_grader, args, output=out, progress=False)


def test_bad_input_fails_before_sampling(tiny_lm, make_args, tmp_path: Path) -> None:
    model, tokenizer = tiny_lm
    args = make_args()
    out = tmp_path / "out"

    def run(problems=PROBLEMS, grader=parity_grader, config=args, target=out, on=model):
        return lambda: presample(on, tokenizer, problems, grader, config, output=target, progress=False)

    check_fails_cleanly(
        run(problems=[*PROBLEMS[:2], {"prompt": "2 + 2"}]),
        ConfigError,
        r"problem 2 needs a non-empty string 'answer' \(got None\); its fields: \['prompt'\]",
        output=out,
    )
    check_fails_cleanly(
        run(problems=[{"prompt": "", "answer": "1"}]), ConfigError, "non-empty string 'prompt'", output=out
    )
    check_fails_cleanly(run(grader="last_number"), ConfigError, "`grader` must be a callable", output=out)
    short, _ = tiny_causal_lm(max_position_embeddings=10)
    check_fails_cleanly(
        run(on=short),
        ConfigError,
        r"problem \d has a prompt of \d+ tokens; with `presample_max_new_tokens`=6 a sample could reach "
        r"\d+ tokens, beyond the model's context of 10",
        output=out,
    )
    check_fails_cleanly(
        run(grader=lambda c, a: "yes"), ConfigError, r"the grader must return a bool, got 'yes'"
    )
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    check_fails_cleanly(run(target=other), ConfigError, "not an earlier pre-sampling run", inputs=[other])
