"""compile_mediator and MediatorModel on real transformers folders (Llama with an untied head, GPT-2 with a
tied one): the paper's identities, the storage formula, the routing fallback, the round trip, bad input."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from paperpack.core.checkpoints import load_state_dict
from paperpack.core.errors import CheckpointError, ConfigError
from paperpack.core.testing.contracts import check_fails_cleanly
from paperpack.merge_router import MediatorConfig, MediatorModel, compile_mediator
from paperpack.merge_router._reference import reference_average
from paperpack.merge_router.compile import CONFIG_NAME, expert_file
from paperpack.merge_router.topk import kept_count
from paperpack.merge_router.units import in_block

TASKS = ("sort", "reverse", "count")
ARCHITECTURES = ["llama_dirs", "gpt2_dirs"]


def experts_of(dirs):
    return {task: dirs[task] for task in TASKS}


def compile_in(tmp_path, dirs, prompts, name="out", routed_units=None, **config):
    config.setdefault("router_steps", 50)
    return compile_mediator(
        dirs["base"],
        experts_of(dirs),
        prompts,
        MediatorConfig(**config),
        tmp_path / name,
        routed_units=routed_units,
    )


def logits_of(folder, batch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture(scope="module")
def mediator_dir(llama_dirs, prompts, tmp_path_factory):
    """A Llama Mediator with the defaults, except a short router training and the top half of units routed."""
    root = tmp_path_factory.mktemp("mediator")
    return compile_in(root, llama_dirs, prompts, threshold_mode="topk", threshold=0.5).output


@pytest.mark.parametrize("family", ARCHITECTURES)
def test_dense_model_loads_alone_and_averages_the_unrouted_units(family, prompts, tmp_path, request):
    from transformers import AutoModelForCausalLM

    dirs = request.getfixturevalue(family)
    report = compile_in(tmp_path, dirs, prompts, threshold_mode="topk", threshold=0.5)
    blocks = [unit for unit in report.conflicts if in_block(unit)]
    assert len(blocks) < len(report.conflicts)  # the embeddings, the final norm (and the head) are units too
    assert len(report.routed_units) == -(-len(blocks) // 2)  # but only the decoder blocks compete
    assert all(in_block(unit) for unit in report.routed_units)
    dense = AutoModelForCausalLM.from_pretrained(report.output)  # loads alone, as any transformers model
    assert type(dense).__name__ == json.loads((dirs["base"] / "config.json").read_text())["architectures"][0]
    states = [load_state_dict(dirs[task]) for task in TASKS]
    average = reference_average(states)
    stored = load_state_dict(report.output)
    assert set(stored) == set(states[0])
    assert report.routed_keys and set(report.routed_keys) < set(stored)
    for key, value in stored.items():
        # The default dense method is the mean too, so every tensor of the dense model is the experts' mean.
        torch.testing.assert_close(value.double(), average[key], atol=1e-6, rtol=1e-6)
    description = json.loads((report.output / CONFIG_NAME).read_text())
    assert description["conflicts"] == report.conflicts and description["routed_keys"] == report.routed_keys


@pytest.mark.parametrize("family", ARCHITECTURES)
def test_density_one_with_forced_routing_reproduces_each_expert(family, prompts, tmp_path, request):
    dirs = request.getfixturevalue(family)
    report = compile_in(
        tmp_path,
        dirs,
        prompts,
        threshold_mode="topk",
        threshold=1.0,
        route_embeddings=True,
        sparse_density=1.0,
    )
    assert set(report.routed_units) == set(report.conflicts)
    mediator = MediatorModel.from_pretrained(report.output, device="cpu")
    batch = mediator.tokenizer(
        ["sort the digits 1 2 3", "how many 4 in 4 4"], return_tensors="pt", padding=True
    )
    for task in TASKS:
        torch.testing.assert_close(
            mediator(**batch, task=task), logits_of(dirs[task], batch), atol=2e-5, rtol=1e-4
        )


def test_every_unit_averaged_equals_plain_averaging(llama_dirs, prompts, tmp_path):
    report = compile_in(tmp_path, llama_dirs, prompts, threshold_mode="absolute", threshold=2.0)
    assert report.routed_units == [] and report.routed_parameters == 0
    average = reference_average([load_state_dict(llama_dirs[task]) for task in TASKS])
    for key, value in load_state_dict(report.output).items():
        torch.testing.assert_close(value.double(), average[key], atol=1e-6, rtol=1e-6)
    mediator = MediatorModel.from_pretrained(report.output, device="cpu")
    batch = mediator.tokenizer(["reverse this word list: fig"], return_tensors="pt")
    for task in TASKS:
        torch.testing.assert_close(mediator(**batch, task=task), logits_of(report.output, batch))


def _payload(path):
    with open(path, "rb") as file:
        header = struct.unpack("<Q", file.read(8))[0]
    return path.stat().st_size - 8 - header


@pytest.mark.parametrize("density", [0.05, 0.3])
def test_storage_equals_the_formula(llama_dirs, prompts, tmp_path, density):
    report = compile_in(
        tmp_path, llama_dirs, prompts, threshold_mode="topk", threshold=0.5, sparse_density=density
    )
    state = load_state_dict(report.output)
    per_task = sum(
        kept_count(state[key].numel(), density) * (4 + state[key].element_size())
        for key in report.routed_keys
    )
    for task in TASKS:
        assert _payload(report.output / expert_file(task)) == per_task
    assert report.sparse_bytes == sum((report.output / expert_file(task)).stat().st_size for task in TASKS)
    files = [path for path in report.output.rglob("*") if path.is_file()]
    assert report.storage_bytes == sum(path.stat().st_size for path in files)
    assert report.routed_fraction == pytest.approx(
        sum(state[key].numel() for key in report.routed_keys) / sum(v.numel() for v in state.values())
    )


def test_routing_is_confident_in_distribution_and_mixes_out_of_distribution(mediator_dir, prompts):
    mediator = MediatorModel.from_pretrained(mediator_dir, device="cpu")
    for task in TASKS:
        for routing in mediator.route(prompts[task]):
            assert routing.experts == (task,) and routing.confidence >= mediator.config.confidence_threshold
    # An unseen format that mixes the markers of three tasks: the router is unsure and mixes its top two.
    (mixed,) = mediator.route(["how many reverse sort apple"])
    assert mixed.confidence < mediator.config.confidence_threshold
    assert len(mixed.experts) == 2 and sum(mixed.weights) == pytest.approx(1.0)


def test_a_mixed_batch_generates_as_each_sequence_alone(mediator_dir, prompts):
    mediator = MediatorModel.from_pretrained(mediator_dir, device="cpu")
    mediator.tokenizer.padding_side = "left"
    texts = [prompts["sort"][0], prompts["count"][1], "how many reverse sort apple"]
    forced = ["reverse", None, None]
    batch = mediator.tokenizer(texts, return_tensors="pt", padding=True)
    together = mediator.generate(**batch, task=forced, max_new_tokens=5, do_sample=False)
    for row, (text, task) in enumerate(zip(texts, forced, strict=True)):
        alone = mediator.generate(
            **mediator.tokenizer([text], return_tensors="pt"), task=task, max_new_tokens=5, do_sample=False
        )
        padding = batch["input_ids"].shape[1] - int(batch["attention_mask"][row].sum())
        assert together[row, padding : padding + alone.shape[1]].tolist() == alone[0].tolist()


def test_an_unknown_forced_task_is_refused(mediator_dir):
    mediator = MediatorModel.from_pretrained(mediator_dir, device="cpu")
    batch = mediator.tokenizer(["sort the digits 9 8 7"], return_tensors="pt")
    with pytest.raises(
        ConfigError, match="unknown task 'math'; this Mediator's tasks are sort, reverse, count"
    ):
        mediator.generate(**batch, task="math", max_new_tokens=2)


def test_save_pretrained_round_trips(mediator_dir, tmp_path):
    mediator = MediatorModel.from_pretrained(mediator_dir, device="cpu")
    batch = mediator.tokenizer(
        ["sort the digits 9 8 7", "how many reverse sort apple"], return_tensors="pt", padding=True
    )
    before = mediator(**batch)
    routes = mediator.route(["sort the digits 9 8 7", "how many reverse sort apple"])
    mediator.save_pretrained(tmp_path / "copy")
    again = MediatorModel.from_pretrained(tmp_path / "copy", device="cpu")
    assert again.route(["sort the digits 9 8 7", "how many reverse sort apple"]) == routes
    torch.testing.assert_close(again(**batch), before)
    for task in TASKS:
        assert (
            load_state_dict(tmp_path / "copy" / expert_file(task)).keys()
            == load_state_dict(mediator_dir / expert_file(task)).keys()
        )
    with pytest.raises(FileExistsError, match="overwrite"):
        mediator.save_pretrained(tmp_path / "copy")
    mediator.save_pretrained(tmp_path / "copy", overwrite=True)


def test_routed_units_given_override_the_rule(llama_dirs, prompts, tmp_path):
    chosen = ["model.layers.1", "model.norm"]
    report = compile_in(tmp_path, llama_dirs, prompts, routed_units=chosen[::-1])
    assert report.routed_units == chosen  # in the model's order
    assert "model.norm.weight" in report.routed_keys
    assert all(key.startswith(("model.layers.1.", "model.norm.")) for key in report.routed_keys)


def test_bad_input_fails_cleanly_and_writes_nothing(llama_dirs, gpt2_dirs, prompts, tmp_path):
    inputs = [llama_dirs[name] for name in ("base", *TASKS)]
    output = tmp_path / "out"
    mixed = {"sort": llama_dirs["sort"], "reverse": gpt2_dirs["reverse"]}
    two = {task: prompts[task] for task in mixed}
    check_fails_cleanly(
        lambda: compile_mediator(llama_dirs["base"], mixed, two, MediatorConfig(), output),
        CheckpointError,
        "mismatched architectures",
        inputs=inputs,
        output=output,
    )
    few = two
    check_fails_cleanly(
        lambda: compile_mediator(llama_dirs["base"], experts_of(llama_dirs), few, MediatorConfig(), output),
        ConfigError,
        "task 'count' has no prompts",
        inputs=inputs,
        output=output,
    )
    empty = {**few, "count": []}
    check_fails_cleanly(
        lambda: compile_mediator(llama_dirs["base"], experts_of(llama_dirs), empty, MediatorConfig(), output),
        ConfigError,
        "task 'count' has no prompts",
        inputs=inputs,
        output=output,
    )
    check_fails_cleanly(
        lambda: compile_mediator(
            llama_dirs["base"],
            experts_of(llama_dirs),
            prompts,
            MediatorConfig(),
            output,
            routed_units=["x.9"],
        ),
        ConfigError,
        r"`routed_units` names 'x.9', which is not a unit of the model; its units are lm_head, model.embed_tokens",
        inputs=inputs,
        output=output,
    )
    for density in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"`sparse_density` must be in \(0, 1\]"):
            MediatorConfig(sparse_density=density)
    with pytest.raises(ConfigError, match="`dense_method`.*'no_such_merge'"):
        MediatorConfig(dense_method="no_such_merge")
    with pytest.raises(ConfigError, match="at least two"):
        compile_mediator(llama_dirs["base"], {"sort": llama_dirs["sort"]}, prompts, MediatorConfig(), output)


def test_a_peft_lora_adapter_is_an_expert(llama_dirs, tiny_lm, prompts, tmp_path):
    import copy

    from peft import LoraConfig, get_peft_model

    model, _ = tiny_lm
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(copy.deepcopy(model), config)
    peft_model.save_pretrained(tmp_path / "lora")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(tmp_path / "lora-merged")
    experts = {"sort": llama_dirs["sort"], "lora": tmp_path / "lora"}
    task_prompts = {"sort": prompts["sort"], "lora": prompts["count"]}
    everything = MediatorConfig(
        threshold_mode="topk", threshold=1.0, route_embeddings=True, sparse_density=1.0, router_steps=20
    )
    report = compile_mediator(llama_dirs["base"], experts, task_prompts, everything, tmp_path / "out")
    mediator = MediatorModel.from_pretrained(report.output, device="cpu")
    batch = mediator.tokenizer(["how many 4 in 4 4"], return_tensors="pt")
    expected = logits_of(tmp_path / "lora-merged", batch)
    torch.testing.assert_close(mediator(**batch, task="lora"), expected, atol=2e-5, rtol=1e-4)
