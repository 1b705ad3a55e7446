"""Streaming merges of checkpoints on disk: round trips, LoRA adapters, tied weights, vocabularies, errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from paperpack.core.checkpoints import LazyStateDict, load_state_dict, save_state_dict
from paperpack.core.errors import CheckpointError, CheckpointNotFoundError, ConfigError, OutputExistsError
from paperpack.core.testing.contracts import assert_no_partial_output, assert_state_dicts_equal
from paperpack.r_tsvm import MergeConfig, merge_checkpoints, merge_state_dicts
from paperpack.r_tsvm.lora import lora_delta_state_dict


def recipe(method, base, models, **extra):
    data = {"merge_method": method, "models": [{"model": str(m)} for m in models], **extra}
    if base is not None:
        data["base_model"] = str(base)
    return data


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            h.update(file.name.encode())
            h.update(file.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "r_tsvm"])
def test_sharded_merge_matches_in_memory_merge_and_loads(model_dirs, tmp_path, method):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    experts = [model_dirs[f"expert{i}"] for i in range(3)]
    before = [digest(d) for d in (model_dirs["base"], *experts)]
    out = merge_checkpoints(
        recipe(
            method,
            model_dirs["base"],
            experts,
            max_shard_size="200KB",
            parameters={"density": 0.5} if method == "ties" else {},
        ),
        tmp_path / "merged",
        progress=False,
    )
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1
    assert (out / "model.safetensors.index.json").is_file()
    assert {"config.json", "tokenizer.json", "merge_config.yaml"} <= {p.name for p in out.iterdir()}
    expected = merge_state_dicts(
        method,
        load_state_dict(model_dirs["base"]),
        [load_state_dict(d) for d in experts],
        **({"density": 0.5} if method == "ties" else {}),
    )
    assert_state_dicts_equal(load_state_dict(out), expected)
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model(**tokenizer(["a merged model"], return_tensors="pt")).logits.isfinite().all()
    assert before == [digest(d) for d in (model_dirs["base"], *experts)]
    # The stored recipe reproduces the merge.
    again = merge_checkpoints(
        MergeConfig.from_yaml(out / "merge_config.yaml"), tmp_path / "again", progress=False
    )
    assert_state_dicts_equal(load_state_dict(again), expected)


@pytest.mark.parametrize("method", ["linear", "ties", "r_tsvm"])
def test_streaming_holds_one_tensor_per_input_at_a_time(model_dirs, tmp_path, monkeypatch, method):
    # Every tensor read from disk is tracked until it is freed: a merge that streams never holds more than
    # the current key's tensors (base + 3 experts), whatever the number of keys.
    import weakref

    original = LazyStateDict.__getitem__
    alive: list[weakref.ref[torch.Tensor]] = []
    peak = {"alive": 0, "reads": 0}

    def tracked(self, key):
        tensor = original(self, key)
        alive[:] = [ref for ref in alive if ref() is not None]
        alive.append(weakref.ref(tensor))
        peak["alive"] = max(peak["alive"], len(alive))
        peak["reads"] += 1
        return tensor

    monkeypatch.setattr(LazyStateDict, "__getitem__", tracked)
    experts = [model_dirs[f"expert{i}"] for i in range(3)]
    merge_checkpoints(recipe(method, model_dirs["base"], experts), tmp_path / "merged", progress=False)
    assert peak["reads"] > 4 * 10
    assert peak["alive"] <= 4


def test_r_tsvm_writes_a_report_per_layer(model_dirs, tmp_path):
    experts = [model_dirs[f"expert{i}"] for i in range(3)]
    out = merge_checkpoints(
        recipe("r_tsvm", model_dirs["base"], experts), tmp_path / "merged", progress=False
    )
    report = json.loads((out / "merge_report.json").read_text())
    assert report["merge_method"] == "r_tsvm"
    layer = report["layers"]["model.layers.0.mlp.up_proj.weight"]
    assert layer["k_cap"] == 64 // 3
    assert len(layer["ranks"]) == len(layer["weights"]) == len(layer["outlier_fractions"]) == 3
    assert report["layers"]["model.embed_tokens.weight"]["k_cap"] == 64 // 3  # decomposed, as in TSV-M


def test_lora_adapter_merges_as_its_dense_delta(model_dirs, tmp_path):
    base_sd = load_state_dict(model_dirs["base"])
    deltas = lora_delta_state_dict(model_dirs["lora"])
    assert set(deltas) == {
        f"model.layers.{i}.{m}.weight"
        for i in range(2)
        for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj")
    }
    # Reference: the adapter as a full model, built by PEFT itself.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model_dirs["base"]), model_dirs["lora"]
    )
    merged_full = peft_model.merge_and_unload().state_dict()
    for key, delta in deltas.items():
        torch.testing.assert_close(base_sd[key] + delta, merged_full[key], atol=1e-6, rtol=1e-5)
    adapted = {key: base_sd[key] + deltas.get(key, 0) for key in base_sd}
    expert = load_state_dict(model_dirs["expert0"])
    for method in ("task_arithmetic", "tsv_m"):
        out = merge_checkpoints(
            recipe(method, model_dirs["base"], [model_dirs["lora"], model_dirs["expert0"]]),
            tmp_path / method,
            progress=False,
        )
        expected = merge_state_dicts(method, base_sd, [adapted, expert])
        assert_state_dicts_equal(load_state_dict(out), expected, atol=1e-6, rtol=1e-5)


def test_lora_adapter_needs_a_base(model_dirs, tmp_path):
    with pytest.raises(ConfigError, match="is a LoRA adapter: set `base_model`"):
        merge_checkpoints(recipe("linear", None, [model_dirs["lora"], model_dirs["expert0"]]), tmp_path / "o")
    assert_no_partial_output(tmp_path / "o")


def test_interrupted_merge_leaves_no_output(model_dirs, tmp_path, monkeypatch):
    from paperpack.r_tsvm import registry

    calls = {"n": 0}
    original = registry.MergeMethod.merge_with_report

    def interrupt(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(registry.MergeMethod, "merge_with_report", interrupt)
    experts = [model_dirs[f"expert{i}"] for i in range(3)]
    with pytest.raises(KeyboardInterrupt):
        merge_checkpoints(
            recipe("task_arithmetic", model_dirs["base"], experts), tmp_path / "merged", progress=False
        )
    assert_no_partial_output(tmp_path / "merged")


def test_output_inside_an_input_is_refused(model_dirs, tmp_path):
    experts = [model_dirs[f"expert{i}"] for i in range(3)]
    before = digest(model_dirs["expert1"])
    for output in (model_dirs["expert1"], model_dirs["expert1"] / "sub"):
        with pytest.raises(CheckpointError, match="overlaps input"):
            merge_checkpoints(recipe("task_arithmetic", model_dirs["base"], experts), output, progress=False)
    assert digest(model_dirs["expert1"]) == before


def _save(state, path, config_from=None):
    out = save_state_dict(state, path)
    if config_from is not None:
        (out / "config.json").write_text((Path(config_from) / "config.json").read_text())
    return out


def test_mismatched_architectures_fail_before_writing(model_dirs, tmp_path):
    base = load_state_dict(model_dirs["base"])
    wrong_shape = dict(base)
    wrong_shape["model.layers.0.mlp.up_proj.weight"] = torch.zeros(100, 64)
    missing = {k: v for k, v in base.items() if "layers.1.mlp" not in k}
    cases = [
        (
            _save(wrong_shape, tmp_path / "shape"),
            r"'model.layers.0.mlp.up_proj.weight' has shape \[100, 64\]",
        ),
        (_save(missing, tmp_path / "missing"), "mismatched architectures: 'model.layers.1.mlp"),
    ]
    for path, match in cases:
        with pytest.raises(CheckpointError, match=match):
            merge_checkpoints(
                recipe("task_arithmetic", model_dirs["base"], [model_dirs["expert0"], path]),
                tmp_path / "out",
                progress=False,
            )
        assert_no_partial_output(tmp_path / "out")


def _resized(base, rows):
    state = dict(base)
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        extra = torch.randn(max(rows - base[key].shape[0], 0), base[key].shape[1])
        state[key] = torch.cat([base[key][:rows], extra]) + 0.01
    return state


def test_vocabulary_mismatch_is_an_error_by_default_with_two_options(model_dirs, tmp_path):
    base = load_state_dict(model_dirs["base"])
    rows = base["model.embed_tokens.weight"].shape[0]
    bigger = _save(_resized(base, rows + 8), tmp_path / "bigger")
    smaller = _save(_resized(base, rows - 4), tmp_path / "smaller")
    models = [model_dirs["expert0"], bigger, smaller]
    with pytest.raises(
        CheckpointError,
        match=rf"vocabulary sizes differ: '(model.embed_tokens|lm_head).weight' has {rows + 8} rows",
    ):
        merge_checkpoints(
            recipe("task_arithmetic", model_dirs["base"], models), tmp_path / "out", progress=False
        )
    assert_no_partial_output(tmp_path / "out")

    kept = load_state_dict(
        merge_checkpoints(
            recipe("task_arithmetic", model_dirs["base"], models, vocab_mismatch="base"),
            tmp_path / "base",
            progress=False,
        )
    )
    torch.testing.assert_close(kept["model.embed_tokens.weight"], base["model.embed_tokens.weight"])

    cut = load_state_dict(
        merge_checkpoints(
            recipe("task_arithmetic", model_dirs["base"], models, vocab_mismatch="truncate"),
            tmp_path / "cut",
            progress=False,
        )
    )
    states = [load_state_dict(m) for m in models]
    key = "model.embed_tokens.weight"
    aligned = [
        s[key][:rows] if s[key].shape[0] >= rows else torch.cat([s[key], base[key][s[key].shape[0] :]])
        for s in states
    ]
    expected = base[key] + sum(a - base[key] for a in aligned)
    torch.testing.assert_close(cut[key], expected)
    assert cut[key].shape == base[key].shape


def test_tied_embeddings_on_either_side(tmp_path):
    from transformers import AutoModelForCausalLM

    from paperpack.core.hf import tiny_causal_lm

    tied, _ = tiny_causal_lm(tie_word_embeddings=True)
    untied, _ = tiny_causal_lm(tie_word_embeddings=False)
    tied.save_pretrained(tmp_path / "tied")
    untied.save_pretrained(tmp_path / "untied")
    assert "lm_head.weight" not in LazyStateDict(tmp_path / "tied")
    # Base tied, expert untied: the expert's separate head is ignored and the output stays tied.
    out = merge_checkpoints(
        recipe("linear", tmp_path / "tied", [tmp_path / "tied", tmp_path / "untied"]),
        tmp_path / "a",
        progress=False,
    )
    assert "lm_head.weight" not in LazyStateDict(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # Base untied, expert tied: the expert's head is its embedding.
    out = merge_checkpoints(
        recipe("task_arithmetic", tmp_path / "untied", [tmp_path / "tied"]), tmp_path / "b", progress=False
    )
    merged = load_state_dict(out)
    tied_sd = load_state_dict(tmp_path / "tied")
    torch.testing.assert_close(merged["lm_head.weight"], tied_sd["model.embed_tokens.weight"])


def test_output_dtype_option(model_dirs, tmp_path):
    out = merge_checkpoints(
        recipe("linear", None, [model_dirs["expert0"], model_dirs["expert1"]], dtype="bfloat16"),
        tmp_path / "bf16",
        progress=False,
    )
    state = LazyStateDict(out)
    assert {state.dtype(k) for k in state} == {torch.bfloat16}


def test_yaml_config_validation(model_dirs, tmp_path):
    def write(data):
        path = tmp_path / "merge.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    good = recipe("ties", model_dirs["base"], [model_dirs["expert0"], model_dirs["expert1"]])
    config = MergeConfig.from_yaml(write({**good, "parameters": {"lambda": 0.5, "density": 0.3}}))
    assert config.method_config.scaling == 0.5
    cases = [
        ({**good, "merge_method": "tie"}, ConfigError, "unknown merge method 'tie'"),
        ({**good, "parameters": {"densty": 0.3}}, ConfigError, "unknown parameter 'densty'"),
        ({**good, "parameters": {"density": 3}}, ConfigError, r"`density` must be in \[0, 1\]"),
        ({**good, "base_model": str(tmp_path / "nope")}, CheckpointNotFoundError, "does not exist"),
        (
            {**good, "models": [{"model": "x", "parameters": {"scaling": 0.2}}]},
            ConfigError,
            "not a per-model parameter",
        ),
        ({**good, "merge": "ties"}, ConfigError, "unknown merge config key 'merge'"),
        ({**good, "base_model": None}, ConfigError, "'ties' works on task vectors and needs a base model"),
        ({**good, "vocab_mismatch": "pad"}, ConfigError, "`vocab_mismatch` must be one of"),
    ]
    for data, error, match in cases:
        with pytest.raises(error, match=match):
            MergeConfig.from_yaml(write(data))
    relative = {"merge_method": "linear", "models": ["a", "b"]}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config = MergeConfig.from_yaml(write(relative))
    assert config.models[0].model == str(tmp_path / "a")


def test_merging_again_into_the_same_folder_replaces_the_report(tmp_path):
    base = save_state_dict({"w": torch.zeros(4, 4)}, tmp_path / "base")
    models = [save_state_dict({"w": torch.randn(4, 4)}, tmp_path / f"m{i}") for i in range(3)]
    for method in ("r_tsvm", "ties"):
        out = merge_checkpoints(
            recipe(method, base, models), tmp_path / "out", progress=False, overwrite=method == "ties"
        )
        report = json.loads((out / "merge_report.json").read_text())
        assert report["merge_method"] == method
        assert MergeConfig.from_yaml(out / "merge_config.yaml").merge_method == method
    assert report["layers"] == {}
    with pytest.raises(OutputExistsError, match="earlier output of `merge`.*pass overwrite=True"):
        merge_checkpoints(recipe("ties", base, models), tmp_path / "out", progress=False)


def test_an_existing_folder_is_refused_unless_it_is_an_earlier_merge(model_dirs, tmp_path):
    """Before: merging into a folder deleted the user's *.safetensors there and kept every other file."""
    from paperpack.core.testing.contracts import snapshot_tree

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "fisher_stats.safetensors").write_bytes(b"user data")
    (folder / "adapter_config.json").write_text("{}")
    before = snapshot_tree([folder])
    data = recipe("task_arithmetic", model_dirs["base"], [model_dirs["expert0"]])
    with pytest.raises(OutputExistsError, match="not empty and that paperpack did not write"):
        merge_checkpoints(data, folder, progress=False, overwrite=True)
    assert snapshot_tree([folder]) == before
    out = merge_checkpoints(data, tmp_path / "out", progress=False)
    with pytest.raises(OutputExistsError, match="pass overwrite=True to replace it"):
        merge_checkpoints(data, out, progress=False)
    with pytest.raises(OutputExistsError, match="an output of `merge`, not of `r-tsvm merge`"):
        merge_checkpoints(data, out, progress=False, overwrite=True, command="r-tsvm merge")
    assert merge_checkpoints(data, out, progress=False, overwrite=True) == out
