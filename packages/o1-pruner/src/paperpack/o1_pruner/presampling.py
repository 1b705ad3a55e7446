"""Pre-sampling (the paper's stage 1 and 2): K reference samples per problem, L_ref, A_ref and the weights.

The output folder holds, as the run goes:

- ``presample.json``: the settings and a fingerprint of the problems (a resumed run must match them);
- ``samples.jsonl``: one line per problem (its K samples: text, token ids, finished, correct and, with
  ``store_ref_logps``, the reference's log-probability of each token), appended and
  flushed ``presample_batch_size`` problems at a time, so an interrupted run keeps what it sampled;
- ``train.jsonl``: written (atomically) once every problem is sampled: the training samples with their
  weights, the data set :class:`~paperpack.o1_pruner.O1PrunerTrainer` reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from paperpack.core.errors import ConfigError
from paperpack.core.files import OUTPUT_MARKER, atomic_write_text
from paperpack.core.hf import encode_prompts, sample_completions
from paperpack.o1_pruner.config import O1PrunerConfig
from paperpack.o1_pruner.graders import Grader
from paperpack.o1_pruner.problems import Problem, check_context, check_problems, grade
from paperpack.o1_pruner.reward import harmonized_weights, length_harmonizing_reward, reference_statistics

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "SAMPLES_FILE",
    "SETTINGS_FILE",
    "TRAIN_FILE",
    "check_presample_inputs",
    "presample",
    "reference_log_probs",
    "training_records",
]

logger = logging.getLogger(__name__)

SETTINGS_FILE = "presample.json"
SAMPLES_FILE = "samples.jsonl"
TRAIN_FILE = "train.jsonl"


def presample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Iterable[Mapping[str, Any]],
    grader: Grader,
    config: O1PrunerConfig,
    *,
    output: str | os.PathLike[str],
    progress: bool = True,
) -> Dataset:
    r"""Sample K solutions per problem from the reference model and build the weighted training set.

    For each problem: K = ``config.num_presamples`` samples (temperature, top-p and length limit from
    ``config.presample_*``), batched ``config.presample_batch_size`` problems per ``generate`` call through
    :func:`paperpack.core.hf.sample_completions`, each graded by ``grader(completion, answer)``; L_ref and
    A_ref, their mean token length and accuracy; then ``config.samples_per_problem`` of them (the first after
    a shuffle seeded by ``config.seed`` and the problem's index), each with R_LH and the weight (clipped to
    ``config.weight_clip``, z-scored over the data set with ``normalize_weights="zscore"``).

    Resumable: rerun with the same arguments and ``output`` after an interruption; the problems already in
    ``samples.jsonl`` are kept and only the rest is sampled, with the same seeds, so the result equals an
    uninterrupted run's.

    Args:
        model: the reference model π_ref (in eval mode while sampling; its mode is restored).
        tokenizer: its tokenizer (a pad token is required).
        problems: records with ``prompt`` and ``answer`` strings (a list or a ``datasets.Dataset``).
        grader: ``(completion, answer) -> bool``, e.g. :func:`~paperpack.o1_pruner.boxed_grader`.
        config: the settings (:class:`~paperpack.o1_pruner.O1PrunerConfig`).
        output: the folder for the samples and ``train.jsonl`` (new, or one this function wrote before).
        progress: show a progress bar over problems.

    Returns:
        The training samples: ``problem_index``, ``prompt``, ``answer``, ``completion``, ``prompt_ids``,
        ``completion_ids``, ``length`` (L(y), completion tokens, end-of-sequence included), ``correct``,
        ``finished``, ``ref_length``, ``ref_accuracy``, ``reward`` (R_LH) and ``weight``; with
        ``config.store_ref_logps`` also ``ref_logps``, the reference's log-probability of each completion
        token (taken once here, in eval mode, so that :class:`~paperpack.o1_pruner.O1PrunerTrainer` needs no
        reference forward pass: the reference is frozen and the samples fixed, so the loss is the same).

    Raises:
        ConfigError: before sampling, for a problem without a prompt or answer, a prompt that with
            ``presample_max_new_tokens`` would run past the model's context, or an ``output`` that holds
            something else or samples made with other settings; while sampling, when the grader raises or
            returns something other than a bool (what was sampled before that batch is kept).
    """
    from datasets import Dataset

    checked, prompt_ids = check_presample_inputs(model, tokenizer, problems, grader, config)
    folder = Path(output)
    settings = _settings(config, checked)
    samples_file = folder / SAMPLES_FILE
    done = _resume(folder, settings)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / SETTINGS_FILE).exists():
        atomic_write_text(folder / SETTINGS_FILE, json.dumps(settings, indent=2) + "\n")
    size = config.presample_batch_size
    was_training = model.training
    model.eval()
    try:
        with (
            samples_file.open("a", encoding="utf-8") as sink,
            tqdm(
                total=len(checked), initial=done, desc="presampling", unit="problem", disable=not progress
            ) as bar,
        ):
            for start in range(done, len(checked), size):
                chunk = checked[start : start + size]
                lines = _sample_chunk(
                    model, tokenizer, chunk, start=start, prompt_ids=prompt_ids, grader=grader, config=config
                )
                sink.write("".join(json.dumps(line) + "\n" for line in lines))
                sink.flush()
                os.fsync(sink.fileno())
                bar.update(len(chunk))
    finally:
        model.train(was_training)
    records = training_records(_read_samples(samples_file, len(checked)), config)
    atomic_write_text(folder / TRAIN_FILE, "".join(json.dumps(r) + "\n" for r in records))
    return Dataset.from_list(records)


def check_presample_inputs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Iterable[Mapping[str, Any]],
    grader: Grader,
    config: O1PrunerConfig,
) -> tuple[list[Problem], list[list[int]]]:
    """What :func:`presample` checks before it writes anything: the problems, the grader, the context.

    Returns:
        The problems and their prompt ids.

    Raises:
        ConfigError: as :func:`presample` does before sampling.
    """
    if not callable(grader):
        raise ConfigError(f"`grader` must be a callable (completion, answer) -> bool, got {grader!r}")
    checked = check_problems(problems)
    prompt_ids = encode_prompts(tokenizer, [p.prompt for p in checked], chat=config.chat_template)
    check_context(model, prompt_ids, config.presample_max_new_tokens, flag="presample_max_new_tokens")
    return checked, prompt_ids


def training_records(problems: list[dict[str, Any]], config: O1PrunerConfig) -> list[dict[str, Any]]:
    """The training samples of pre-sampled problems (the lines of ``samples.jsonl``), weighted.

    Per problem: L_ref, A_ref over all K samples; the first ``samples_per_problem`` after a shuffle seeded by
    ``config.seed`` and the problem index; R_LH of each; then the weights over the whole set.
    """
    records = []
    for problem in problems:
        samples = problem["samples"]
        lengths = [len(s["token_ids"]) for s in samples]
        correct = [bool(s["correct"]) for s in samples]
        ref_length, ref_accuracy = reference_statistics(lengths, correct)
        order = list(range(len(samples)))
        random.Random(f"{config.seed}:{problem['index']}").shuffle(order)
        chosen = order[: config.samples_per_problem]
        rewards = length_harmonizing_reward(
            [lengths[k] for k in chosen],
            [correct[k] for k in chosen],
            ref_length,
            ref_accuracy,
            lam=config.lam,
        )
        for k, reward in zip(chosen, rewards, strict=True):
            records.append(
                {
                    "problem_index": problem["index"],
                    "prompt": problem["prompt"],
                    "answer": problem["answer"],
                    "completion": samples[k]["text"],
                    "prompt_ids": problem["prompt_ids"],
                    "completion_ids": samples[k]["token_ids"],
                    "length": lengths[k],
                    "correct": correct[k],
                    "finished": samples[k]["finished"],
                    "ref_length": ref_length,
                    "ref_accuracy": ref_accuracy,
                    "reward": reward,
                    **({"ref_logps": samples[k]["ref_logps"]} if "ref_logps" in samples[k] else {}),
                }
            )
    weights = harmonized_weights(
        [r["reward"] for r in records], clip=config.weight_clip, normalize=config.normalize_weights
    )
    for record, weight in zip(records, weights, strict=True):
        record["weight"] = weight
    return records


def _settings(config: O1PrunerConfig, problems: list[Problem]) -> dict[str, Any]:
    digest = hashlib.sha256()
    for problem in problems:
        digest.update(json.dumps([problem.prompt, problem.answer]).encode())
    return {
        "num_presamples": config.num_presamples,
        "presample_temperature": config.presample_temperature,
        "presample_top_p": config.presample_top_p,
        "presample_max_new_tokens": config.presample_max_new_tokens,
        "presample_batch_size": config.presample_batch_size,
        "chat_template": config.chat_template,
        "store_ref_logps": config.store_ref_logps,
        "seed": config.seed,
        "num_problems": len(problems),
        "problems_sha256": digest.hexdigest(),
    }


def _resume(folder: Path, settings: dict[str, Any]) -> int:
    """How many problems an earlier run into ``folder`` sampled (0 for a new folder); checks it matches."""
    if not folder.exists():
        return 0
    if not folder.is_dir():
        raise ConfigError(f"output {str(folder)!r} is a file; give a folder")
    settings_file = folder / SETTINGS_FILE
    if not settings_file.is_file():
        if any(path.name != OUTPUT_MARKER for path in folder.iterdir()):
            raise ConfigError(
                f"output {str(folder)!r} is not empty and holds no {SETTINGS_FILE}: it is not an earlier "
                "pre-sampling run; choose a new or empty folder"
            )
        return 0
    earlier = json.loads(settings_file.read_text(encoding="utf-8"))
    changed = sorted(key for key in settings if earlier.get(key) != settings[key])
    if changed:
        detail = ", ".join(f"{key} {earlier.get(key)!r} -> {settings[key]!r}" for key in changed)
        raise ConfigError(
            f"output {str(folder)!r} holds pre-samples made with other settings or problems ({detail}); "
            "resume with the same ones or choose a new folder"
        )
    samples_file = folder / SAMPLES_FILE
    if not samples_file.is_file():
        return 0
    raw = samples_file.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    if len(complete) != len(raw):  # a line cut by the interruption: sample that batch again
        logger.info("dropping an incomplete last line of %s", samples_file)
        samples_file.write_bytes(complete)
    count = complete.count(b"\n")
    size = settings["presample_batch_size"]
    if count % size and count != settings["num_problems"]:
        kept = count - count % size
        logger.info("keeping %d whole batches of %s", kept // size, samples_file)
        samples_file.write_bytes(b"".join(line + b"\n" for line in complete.splitlines()[:kept]))
        count = kept
    return count


def _sample_chunk(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    chunk: list[Problem],
    *,
    start: int,
    prompt_ids: list[list[int]],
    grader: Grader,
    config: O1PrunerConfig,
) -> list[dict[str, Any]]:
    completions = sample_completions(
        model,
        tokenizer,
        [p.prompt for p in chunk],
        num_samples=config.num_presamples,
        max_new_tokens=config.presample_max_new_tokens,
        batch_size=len(chunk),
        temperature=config.presample_temperature,
        top_p=config.presample_top_p,
        seed=config.seed + start,
        chat=config.chat_template,
    )
    ref_logps: list[list[float]] | None = None
    if config.store_ref_logps:
        ref_logps = reference_log_probs(
            model,
            [prompt_ids[start + i] for i, samples in enumerate(completions) for _ in samples],
            [s.token_ids for samples in completions for s in samples],
            batch_size=len(chunk) * config.num_presamples,
            pad_token_id=_pad_id(tokenizer),
        )
    lines = []
    for offset, (problem, samples) in enumerate(zip(chunk, completions, strict=True)):
        index = start + offset
        lines.append(
            {
                "index": index,
                "prompt": problem.prompt,
                "answer": problem.answer,
                "prompt_ids": prompt_ids[index],
                "samples": [
                    {
                        "text": s.text,
                        "token_ids": s.token_ids,
                        "finished": s.finished,
                        "correct": grade(grader, s.text, problem.answer, index, k),
                        **(
                            {"ref_logps": ref_logps[offset * config.num_presamples + k]}
                            if ref_logps is not None
                            else {}
                        ),
                    }
                    for k, s in enumerate(samples)
                ],
            }
        )
    return lines


def _read_samples(path: Path, expected: int) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    indices = [line["index"] for line in lines]
    if indices != list(range(expected)):
        raise ConfigError(
            f"{path} does not hold problems 0..{expected - 1} in order; pre-sample into a new folder"
        )
    return lines


def reference_log_probs(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    *,
    batch_size: int = 16,
    pad_token_id: int = 0,
) -> list[list[float]]:
    """The reference's log π_ref(y_t | x, y_<t) of every completion token (eval mode, no gradients).

    What :class:`~paperpack.o1_pruner.O1PrunerTrainer` would compute with a reference model at every step; the
    pre-sampling stage stores it once (``store_ref_logps``).

    Args:
        model: the reference model (its training mode is restored).
        prompt_ids: each sample's prompt ids.
        completion_ids: each sample's completion ids (end-of-sequence included).
        batch_size: samples per forward pass.
        pad_token_id: the id that fills padding (masked out).

    Returns:
        One list per sample, as long as its completion.
    """
    from paperpack.o1_pruner.collator import O1PrunerCollator
    from paperpack.o1_pruner.loss import token_log_probs

    collate = O1PrunerCollator(pad_token_id)
    device = next(model.parameters()).device
    records = [
        {"prompt_ids": p, "completion_ids": c, "weight": 0.0}
        for p, c in zip(prompt_ids, completion_ids, strict=True)
    ]
    result: list[list[float]] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(records), batch_size):
            batch = collate(records[start : start + batch_size])
            with torch.no_grad():
                logits = model(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                    use_cache=False,
                ).logits
                logps, mask = token_log_probs(logits, batch["labels"].to(device))
            for row, row_mask in zip(logps.float().cpu(), mask.bool().cpu(), strict=True):
                result.append(row[row_mask].tolist())
    finally:
        model.train(was_training)
    return result


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0
