"""mergekit's recipe features: parameter settings, the base model, SLERP's t, slices, vocabularies, chat templates."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from paperpack.core.checkpoints import load_state_dict
from paperpack.core.errors import CheckpointError, ConfigError
from paperpack.core.testing.contracts import assert_no_partial_output, assert_state_dicts_equal
from paperpack.r_tsvm import (
    MergeConfig,
    merge_checkpoints,
    merge_state_dicts,
    merge_tensors,
)
from paperpack.r_tsvm.settings import evaluate_setting, resolve

from .conftest import perturbed


def recipe(method, base, models, **extra):
    data = {
        "merge_method": method,
        "models": [m if isinstance(m, dict) else {"model": str(m)} for m in models],
    }
    if base is not None:
        data["base_model"] = str(base)
    return {**data, **extra}


def experts(model_dirs):
    return [model_dirs[f"expert{i}"] for i in range(3)]


# ----------------------------------------------------------------------------------------------------------
# Settings: gradients and filters, as mergekit evaluates them


def test_gradients_interpolate_over_layers_and_pick_discrete_values():
    assert evaluate_setting([0.0, 1.0], "k", 0.25) == 0.25
    assert evaluate_setting([0, 0.5, 0.3, 0.7, 1], "k", 0.6) == pytest.approx(0.46)
    assert evaluate_setting([1.0, 2.0, 3.0], "k", 1.0) == 3.0
    assert evaluate_setting(["sum", "count"], "k", 0.6) == "sum"
    assert evaluate_setting([True, False], "k", 1.0) is False


def test_filters_take_the_first_match_and_fall_through_when_none_matches():
    setting = [{"filter": "self_attn", "value": [0.0, 1.0]}, {"filter": "mlp", "value": 0.8}, {"value": 0.5}]
    assert evaluate_setting(setting, "model.layers.3.self_attn.q_proj.weight", 0.5) == 0.5
    assert evaluate_setting(setting, "model.layers.3.mlp.up_proj.weight", 0.5) == 0.8
    assert evaluate_setting(setting, "model.norm.weight", 0.0) == 0.5
    only_mlp = [{"filter": "mlp", "value": 0.2}]
    assert evaluate_setting(only_mlp, "lm_head.weight", 0.0) is None
    # The model's own setting says nothing about lm_head, so the recipe's decides.
    assert resolve("density", [{"density": only_mlp}, {"density": 0.9}], "lm_head.weight", 0.0) == 0.9


def test_per_layer_gradients_and_filters_in_a_merge(model_dirs, tmp_path):
    """mergekit's canonical SLERP recipe: t by module, as a gradient over the layers."""
    t = [{"filter": "self_attn", "value": [0.0, 1.0]}, {"filter": "mlp", "value": [1.0, 0.0]}, {"value": 0.5}]
    models = [model_dirs["expert0"], model_dirs["expert1"]]
    out = merge_checkpoints(
        recipe("slerp", None, models, parameters={"t": t}), tmp_path / "out", progress=False
    )
    merged, a, b = load_state_dict(out), load_state_dict(models[0]), load_state_dict(models[1])
    expected_t = {
        "model.layers.0.self_attn.q_proj.weight": 0.0,
        "model.layers.1.self_attn.q_proj.weight": 1.0,
        "model.layers.0.mlp.up_proj.weight": 1.0,
        "model.layers.1.mlp.up_proj.weight": 0.0,
        "model.norm.weight": 0.5,
        "model.embed_tokens.weight": 0.5,
    }
    for key, value in expected_t.items():
        torch.testing.assert_close(merged[key], merge_tensors("slerp", None, [a[key], b[key]], t=value))


def test_per_model_parameters_with_filters(model_dirs, tmp_path):
    density = [{"filter": "mlp", "value": 0.2}, {"value": 0.7}]
    models = [
        {"model": str(model_dirs["expert0"]), "parameters": {"weight": 0.5, "density": density}},
        {"model": str(model_dirs["expert1"]), "parameters": {"weight": 1.5}},
    ]
    out = merge_checkpoints(
        recipe("ties", model_dirs["base"], models, parameters={"density": 0.4}),
        tmp_path / "out",
        progress=False,
    )
    merged, base = load_state_dict(out), load_state_dict(model_dirs["base"])
    tensors = [load_state_dict(model_dirs[f"expert{i}"]) for i in range(2)]
    for key, first in (
        ("model.layers.0.mlp.down_proj.weight", 0.2),
        ("model.layers.0.self_attn.o_proj.weight", 0.7),
    ):
        expected = merge_tensors(
            "ties",
            base[key],
            [t[key] for t in tensors],
            weights=[0.5, 1.5],
            model_params=[{"density": first}, {"density": 0.4}],
        )
        torch.testing.assert_close(merged[key], expected)


# ----------------------------------------------------------------------------------------------------------
# The base model


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "tsv_m"])
def test_base_listed_under_models_is_skipped_as_in_mergekit(model_dirs, tmp_path, method):
    """Before: the base counted as a zero task vector (TSV-M's budget dropped from r/T to r/(T+1), its
    averaged biases came out x 0.75, TIES's disjoint mean and task arithmetic's normalized mean were diluted)."""
    plain = merge_checkpoints(
        recipe(method, model_dirs["base"], experts(model_dirs)), tmp_path / "a", progress=False
    )
    listed = recipe(method, model_dirs["base"], [model_dirs["base"], *experts(model_dirs)])
    with_base = merge_checkpoints(listed, tmp_path / "b", progress=False)
    assert_state_dicts_equal(load_state_dict(with_base), load_state_dict(plain))
    assert [
        m["model"] for m in MergeConfig.from_yaml(with_base / "merge_config.yaml").to_dict()["models"]
    ] == [str(e) for e in experts(model_dirs)]


def test_slerp_measures_t_from_the_base(model_dirs, tmp_path):
    """Before: t was measured from the first listed model and `base_model` was ignored."""
    base, expert = model_dirs["base"], model_dirs["expert0"]
    for t in (0.0, 0.3):
        out = merge_checkpoints(
            recipe("slerp", base, [expert, base], parameters={"t": t}), tmp_path / f"t{t}", progress=False
        )
        expected = merge_state_dicts("slerp", None, [load_state_dict(base), load_state_dict(expert)], t=t)
        assert_state_dicts_equal(load_state_dict(out), expected)
    # Without a base, the first model is t = 0, as before.
    out = merge_checkpoints(
        recipe("slerp", None, [expert, base], parameters={"t": 0.0}), tmp_path / "n", progress=False
    )
    assert_state_dicts_equal(load_state_dict(out), load_state_dict(expert))


# ----------------------------------------------------------------------------------------------------------
# Slices, layer ranges, passthrough


@pytest.fixture(scope="session")
def gpt2_dirs(tiny_lm, tmp_path_factory):
    """A tiny GPT-2 (transformer.h.N, tied head) and a perturbed copy, with the tiny tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tokenizer = tiny_lm
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=4, n_head=2, n_positions=64)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    root = tmp_path_factory.mktemp("gpt2")
    dirs = {"base": root / "base", "expert": root / "expert"}
    model.save_pretrained(dirs["base"])
    perturbed(model, 7).save_pretrained(dirs["expert"])
    for folder in dirs.values():
        tokenizer.save_pretrained(folder)
    return dirs


def _passthrough(first, second):
    return {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": str(first), "layer_range": [0, 2]}]},
            {"sources": [{"model": str(second), "layer_range": [1, 2]}]},
        ],
    }


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_passthrough_slices_stack_layers(model_dirs, gpt2_dirs, tmp_path, arch):
    from transformers import AutoModelForCausalLM

    first, second = (
        (model_dirs["expert0"], model_dirs["expert1"])
        if arch == "llama"
        else (gpt2_dirs["base"], gpt2_dirs["expert"])
    )
    out = merge_checkpoints(_passthrough(first, second), tmp_path / "out", progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers" if arch == "llama" else "n_layer"] == 3
    merged, a, b = load_state_dict(out), load_state_dict(first), load_state_dict(second)
    prefix = "model.layers." if arch == "llama" else "transformer.h."
    for key, value in merged.items():
        if key.startswith(prefix):
            layer, rest = key[len(prefix) :].split(".", 1)
            source = a[f"{prefix}{layer}.{rest}"] if int(layer) < 2 else b[f"{prefix}1.{rest}"]
            torch.testing.assert_close(value, source)
        else:
            torch.testing.assert_close(
                value, a[key] if "embed" in key or "wte" in key or "wpe" in key else b[key]
            )
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model(torch.tensor([[1, 2, 3]])).logits.isfinite().all()


def test_slices_merge_with_a_method_and_per_source_scale(model_dirs, tmp_path):
    base, expert = model_dirs["base"], model_dirs["expert0"]
    data = {
        "merge_method": "slerp",
        "base_model": str(base),
        "slices": [
            {
                "sources": [
                    {"model": str(expert), "layer_range": [0, 2]},
                    {"model": str(base), "layer_range": [0, 2]},
                ],
                "parameters": {"t": [0.0, 1.0]},
            }
        ],
    }
    merged = load_state_dict(merge_checkpoints(data, tmp_path / "slerp", progress=False))
    a, b = load_state_dict(base), load_state_dict(expert)
    torch.testing.assert_close(
        merged["model.layers.0.mlp.up_proj.weight"], a["model.layers.0.mlp.up_proj.weight"]
    )
    torch.testing.assert_close(
        merged["model.layers.1.mlp.up_proj.weight"], b["model.layers.1.mlp.up_proj.weight"]
    )
    scaled = _passthrough(expert, expert)
    scaled["slices"][1]["sources"][0]["parameters"] = {
        "scale": [{"filter": "o_proj", "value": 0.0}, {"value": 1.0}]
    }
    merged = load_state_dict(merge_checkpoints(scaled, tmp_path / "scaled", progress=False))
    assert not merged["model.layers.2.self_attn.o_proj.weight"].any()
    torch.testing.assert_close(
        merged["model.layers.2.mlp.up_proj.weight"], b["model.layers.1.mlp.up_proj.weight"]
    )


# ----------------------------------------------------------------------------------------------------------
# tokenizer_source and chat_template


@pytest.fixture(scope="session")
def token_dirs(tiny_lm, tmp_path_factory):
    """The base, a fine-tune that adds two tokens and one that adds a special token (each with its tokenizer)."""
    model, tokenizer = tiny_lm
    root = tmp_path_factory.mktemp("tokens")
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    dirs = {"base": root / "base"}
    for name, added, special in (("a", ["<tool>", "</tool>"], False), ("b", ["<think>"], True)):
        own = copy.deepcopy(tokenizer)
        own.add_tokens(added, special_tokens=special)
        expert = perturbed(model, 11 if name == "a" else 12)
        expert.resize_token_embeddings(len(own), mean_resizing=False)
        expert.save_pretrained(root / name)
        own.save_pretrained(root / name)
        dirs[name] = root / name
    return dirs


def test_tokenizer_union_aligns_embeddings_by_token(token_dirs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = recipe(
        "task_arithmetic", token_dirs["base"], [token_dirs["a"], token_dirs["b"]], tokenizer_source="union"
    )
    out = merge_checkpoints(data, tmp_path / "out", progress=False)
    tokenizer = AutoTokenizer.from_pretrained(out)
    vocab = tokenizer.get_vocab()
    base_tokenizer = AutoTokenizer.from_pretrained(token_dirs["base"])
    assert {"<tool>", "</tool>", "<think>"} <= set(vocab)
    assert len(vocab) == len(base_tokenizer) + 3
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(vocab)
    merged = load_state_dict(out)["model.embed_tokens.weight"]
    base = load_state_dict(token_dirs["base"])["model.embed_tokens.weight"]
    a = load_state_dict(token_dirs["a"])["model.embed_tokens.weight"]
    a_vocab = AutoTokenizer.from_pretrained(token_dirs["a"]).get_vocab()
    # A token only `a` has: every model takes a's row, so task arithmetic keeps it.
    torch.testing.assert_close(merged[vocab["<tool>"]], a[a_vocab["<tool>"]])
    # A shared token: base + (a - base) + (b - base), row by row.
    b = load_state_dict(token_dirs["b"])["model.embed_tokens.weight"]
    token = base_tokenizer.convert_ids_to_tokens(7)
    expected = base[7] + (a[a_vocab[token]] - base[7]) + (b[7] - base[7])
    torch.testing.assert_close(merged[vocab[token]], expected)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model(**tokenizer(["<think> hi <tool>"], return_tensors="pt")).logits.isfinite().all()


def test_chat_template_named_auto_or_given(model_dirs, token_dirs, tmp_path):
    from transformers import AutoTokenizer

    from paperpack.r_tsvm.vocabulary import CHATML

    messages = [{"role": "user", "content": "hi"}]
    models = [model_dirs["base"], token_dirs["a"]]

    def recipe(method, base, models, **extra):  # the vocabularies differ: keep the first model's embeddings
        return globals()["recipe"](method, base, models, vocab_mismatch="base", **extra)

    chatml = merge_checkpoints(
        recipe("linear", None, models, chat_template="chatml"), tmp_path / "c", progress=False
    )
    assert AutoTokenizer.from_pretrained(chatml).chat_template == CHATML
    rendered = AutoTokenizer.from_pretrained(chatml).apply_chat_template(messages, tokenize=False)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n"
    literal = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    given = merge_checkpoints(
        recipe("linear", None, models, chat_template=literal), tmp_path / "l", progress=False
    )
    assert AutoTokenizer.from_pretrained(given).apply_chat_template(messages, tokenize=False) == "<user>hi"
    auto = merge_checkpoints(
        recipe("linear", None, models, chat_template="auto"), tmp_path / "a", progress=False
    )
    original = AutoTokenizer.from_pretrained(model_dirs["base"]).chat_template
    assert AutoTokenizer.from_pretrained(auto).chat_template.strip() == original.strip()


# ----------------------------------------------------------------------------------------------------------
# Outputs, the public walk, and bad recipes


def test_single_file_output_gets_the_recipe_and_report_beside_it(tmp_path):
    """Before: merge_report.json was written for folder outputs only; now the report, with the recipe, is beside
    the file."""
    from paperpack.core.checkpoints import save_state_dict

    base = save_state_dict({"w": torch.zeros(6, 6)}, tmp_path / "base.safetensors")
    models = [save_state_dict({"w": torch.randn(6, 6)}, tmp_path / f"m{i}.safetensors") for i in range(3)]
    out = merge_checkpoints(recipe("r_tsvm", base, models), tmp_path / "merged.safetensors", progress=False)
    report = json.loads((tmp_path / "merged.merge_report.json").read_text())
    assert report["merge_method"] == "r_tsvm"
    assert report["layers"]["w"]["k_cap"] == 2
    again = merge_checkpoints(MergeConfig.from_dict(report["recipe"]), tmp_path / "again.safetensors")
    assert_state_dicts_equal(load_state_dict(again), load_state_dict(out))
    # The file and its report are an earlier output of `merge`: replaced together with overwrite, not without.
    from paperpack.core.errors import OutputExistsError

    with pytest.raises(OutputExistsError, match="merged.safetensors' already exists"):
        merge_checkpoints(recipe("ties", base, models), out, progress=False)
    merge_checkpoints(recipe("ties", base, models), out, progress=False, overwrite=True)
    assert json.loads((tmp_path / "merged.merge_report.json").read_text())["merge_method"] == "ties"


def write(tmp_path, data):
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"parameters": {"t": [0.1, "x"]}}, r"unknown parameter 't'"),
        (
            {"models": [{"model": "{e0}", "parameters": {"lambda": 2.0}}]},
            r"`scaling` in `models\[0\].parameters` is not a per-model",
        ),
        (
            {"models": [{"model": "{e0}", "parameters": {"densty": 0.2}}]},
            r"unknown parameter 'densty' for merge method 'ties'",
        ),
        ({"parameters": {"density": [0.1, 2.0]}}, r"`density` must be in \[0, 1\], got 2.0"),
        ({"parameters": {"density": {"filter": 3, "value": 0.2}}}, r"`filter` must be a string"),
        ({"parameters": {"density": []}}, "a non-empty list of those"),
        ({"tokenizer": {"source": "union"}}, "mergekit's `tokenizer:` block: use `tokenizer_source`"),
        ({"chat_template": "vicuna"}, r"`chat_template` must be 'auto', 'chatml' or a Jinja template"),
    ],
)
def test_bad_recipes_are_refused_before_reading_tensors(model_dirs, tmp_path, change, match):
    data = recipe("ties", model_dirs["base"], experts(model_dirs))
    for key, value in change.items():
        data[key] = json.loads(json.dumps(value).replace("{e0}", str(model_dirs["expert0"])))
    with pytest.raises(ConfigError, match=match):
        MergeConfig.from_yaml(write(tmp_path, data))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (
            {
                "merge_method": "slerp",
                "base_model": "{base}",
                "models": [{"model": "{e0}", "parameters": {"weight": 1}}],
            },
            "'slerp' takes no per-model `weight`; it takes `t` under `parameters`",
        ),
        ({"merge_method": "model_stock", "base_model": "{base}", "models": ["{e0}"]}, "at least 2 model"),
        (
            {
                "merge_method": "ties",
                "base_model": "{base}",
                "slices": [{"sources": [{"model": "{e0}", "layer_range": [0, 2]}]}],
            },
            r"slices\[0\]: the base model .* must be one of the slice's sources",
        ),
        (
            {
                "merge_method": "linear",
                "slices": [
                    {
                        "sources": [
                            {"model": "{e0}", "layer_range": [0, 2]},
                            {"model": "{e1}", "layer_range": [0, 1]},
                        ]
                    }
                ],
            },
            "the sources of a slice must have the same number of layers",
        ),
        (
            {"merge_method": "linear", "slices": [{"sources": [{"model": "{e0}", "layer_range": [2, 1]}]}]},
            "layer_range",
        ),
        (
            {"merge_method": "linear", "models": ["{e0}"], "slices": []},
            "exactly one of `models` and `slices`",
        ),
    ],
)
def test_bad_layouts_are_refused(model_dirs, tmp_path, data, match):
    text = json.dumps(data)
    for name, path in (
        ("{base}", model_dirs["base"]),
        ("{e0}", model_dirs["expert0"]),
        ("{e1}", model_dirs["expert1"]),
    ):
        text = text.replace(name, str(path))
    with pytest.raises(ConfigError, match=match):
        MergeConfig.from_yaml(write(tmp_path, json.loads(text)))


def test_a_layer_range_past_the_last_layer_fails_before_writing(model_dirs, tmp_path):
    data = {
        "merge_method": "passthrough",
        "slices": [{"sources": [{"model": str(model_dirs["expert0"]), "layer_range": [0, 5]}]}],
    }
    with pytest.raises(CheckpointError, match="has no layer 2"):
        merge_checkpoints(data, tmp_path / "out", progress=False)
    assert_no_partial_output(tmp_path / "out")
