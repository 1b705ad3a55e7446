"""The benchmarks' work that touches tensors, run as ``python _children.py FUNCTION ARGS...`` in a child process.

- ``models WORKDIR SPEC_JSON``: write a synthetic Llama base and fine-tunes (base + seeded noise) once.
- ``parity-models WORKDIR``: the small models of the parity recipes (tokenizers, added tokens, chat templates).
- ``warm FOLDER...``: read every input file once.
- ``merge RECIPE OUTPUT``: merge with paperpack-r-tsvm, measured with the core's MemoryMeter.
- ``compare A B``: the largest |a − b| over all keys (embeddings compared by token when vocabularies differ).
- ``truncation WORKDIR METHOD_JSON``: per task and matrix, the truncation error of the fast and exact paths.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import torch


def models(workdir: str, spec_json: str) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from paperpack.core.checkpoints import save_state_dict

    spec = json.loads(spec_json)
    root = Path(workdir)
    marker = root / f"ready-{spec['name']}"
    folders = {"base": root / "base", **{f"expert{i}": root / f"expert{i}" for i in range(spec["experts"])}}
    config = LlamaConfig(
        vocab_size=spec["vocab"],
        hidden_size=spec["hidden"],
        intermediate_size=spec["intermediate"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        num_key_value_heads=spec["heads"],
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )
    with torch.device("meta"):
        shapes = {key: tuple(t.shape) for key, t in LlamaForCausalLM(config).state_dict().items()}
    if not marker.exists():
        root.mkdir(parents=True, exist_ok=True)
        generator = torch.Generator().manual_seed(0)
        base = {key: 0.02 * torch.randn(shape, generator=generator) for key, shape in shapes.items()}
        for name, folder in folders.items():
            state = base
            if name != "base":
                state = {
                    k: v + spec["noise"] * torch.randn(v.shape, generator=generator) for k, v in base.items()
                }
            save_state_dict(state, folder, max_shard_size="500MB")
            config.save_pretrained(folder)
        marker.touch()
    count = sum(torch.Size(s).numel() for s in shapes.values())
    print(json.dumps({"folders": {k: str(v) for k, v in folders.items()}, "parameters": count}))


def parity_models(workdir: str) -> dict[str, str]:
    """A base with a tokenizer and chat template, three noisy fine-tunes, two with added tokens, one with
    another chat template (all saved as from_pretrained folders)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from paperpack.core.hf import tiny_tokenizer

    root = Path(workdir)
    marker = root / "ready-parity"
    names = ["base", "expert0", "expert1", "expert2", "tokens_a", "tokens_b", "template"]
    if not marker.exists():
        tokenizer = tiny_tokenizer()
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=4,
            tie_word_embeddings=False,
            architectures=["LlamaForCausalLM"],
        )
        torch.manual_seed(0)
        base = LlamaForCausalLM(config)
        generator = torch.Generator().manual_seed(1)

        def noisy(scale: float = 0.01) -> LlamaForCausalLM:
            model = LlamaForCausalLM(copy.deepcopy(config))
            model.load_state_dict(base.state_dict())
            with torch.no_grad():
                for param in model.parameters():
                    param.add_(scale * torch.randn(param.shape, generator=generator))
            return model

        base.save_pretrained(root / "base")
        tokenizer.save_pretrained(root / "base")
        for i in range(3):
            noisy().save_pretrained(root / f"expert{i}")
            tokenizer.save_pretrained(root / f"expert{i}")
        for name, added in (("tokens_a", ["<tool>", "</tool>"]), ("tokens_b", ["<think>"])):
            own = tiny_tokenizer()
            own.add_tokens(added, special_tokens=name == "tokens_b")
            model = noisy()
            model.resize_token_embeddings(len(own), mean_resizing=False)
            with torch.no_grad():
                model.get_input_embeddings().weight[-len(added) :] = torch.randn(
                    len(added), 128, generator=generator
                )
                model.get_output_embeddings().weight[-len(added) :] = torch.randn(
                    len(added), 128, generator=generator
                )
            model.save_pretrained(root / name)
            own.save_pretrained(root / name)
        other = tiny_tokenizer()
        other.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        noisy().save_pretrained(root / "template")
        other.save_pretrained(root / "template")
        marker.touch()
    return {name: str(root / name) for name in names}


def warm(*folders: str) -> None:
    """Read every input file once, so that no arm pays the first cold read."""
    for folder in folders:
        for file in Path(folder).glob("*.safetensors"):
            with file.open("rb") as handle:
                while handle.read(1 << 26):
                    pass


def merge(recipe: str, output: str, lapack: str = "scipy") -> None:
    """Merge a recipe; ``lapack="torch"`` makes the fast path take torch's eigendecompositions and SVDs (the
    routes it takes off the CPU) instead of SciPy's, to measure what the library choice is worth."""
    from paperpack.core.device import MemoryMeter
    from paperpack.r_tsvm import merge_checkpoints
    from paperpack.r_tsvm.methods import spectral

    if lapack == "torch":
        spectral._lapack_ready = lambda tensor: False

    with MemoryMeter("cpu") as meter:
        merge_checkpoints(recipe, output, progress=False)
    print(json.dumps({"memory_meter_peak": meter.peak_bytes}))


def _rows_by_token(folder: Path, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return {token: tensor[index] for token, index in tokenizer.get_vocab().items() if index < tensor.shape[0]}


def compare(a: str, b: str) -> dict[str, object]:
    from paperpack.core.checkpoints import LazyStateDict

    left, right = LazyStateDict(a), LazyStateDict(b)
    result: dict[str, object] = {"keys_equal": set(left) == set(right)}
    if set(left) != set(right):
        result["only_a"] = sorted(set(left) - set(right))[:5]
        result["only_b"] = sorted(set(right) - set(left))[:5]
    worst, worst_key, by_token = 0.0, None, False
    for key in sorted(set(left) & set(right)):
        x, y = left[key].double(), right[key].double()
        vocabulary = (
            re.search(r"(embed_tokens|lm_head)\.weight$", key) and (Path(a) / "tokenizer.json").is_file()
        )
        if (x.shape != y.shape or vocabulary) and x.shape[1:] == y.shape[1:]:
            rows_x, rows_y = _rows_by_token(Path(a), x), _rows_by_token(Path(b), y)
            if set(rows_x) != set(rows_y):
                result["vocab_differs"] = sorted(set(rows_x) ^ set(rows_y))[:5]
            common = sorted(set(rows_x) & set(rows_y))
            x = torch.stack([rows_x[t] for t in common])
            y = torch.stack([rows_y[t] for t in common])
            by_token = True
        if x.shape != y.shape:
            result.setdefault("shape_differs", []).append([key, list(x.shape), list(y.shape)])  # type: ignore[union-attr]
            continue
        diff = float((x - y).abs().max()) if x.numel() else 0.0
        if diff > worst:
            worst, worst_key = diff, key
    scale = max(float(left[k].double().abs().max()) for k in left)
    result.update(max_diff=worst, worst_key=worst_key, scale=scale, compared_by_token=by_token)
    for name in ("config.json",):
        ca, cb = json.loads((Path(a) / name).read_text()), json.loads((Path(b) / name).read_text())
        result["config_differs"] = {
            k: [ca.get(k), cb.get(k)]
            for k in ("num_hidden_layers", "vocab_size", "layer_types")
            if ca.get(k) != cb.get(k)
        }
    return result


def chat(folder: str) -> dict[str, object]:
    """The chat template's rendering of a fixed conversation, and the vocabulary size."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False) if tokenizer.chat_template else None
    return {"rendered": rendered, "vocab": len(tokenizer)}


def truncation(workdir: str, spec_json: str) -> None:
    """Per decomposed matrix and task: ‖Δ_t − Δ_t,k‖_F of the fast and the exact path, k = TSV-M's budget."""
    from paperpack.core.checkpoints import LazyStateDict
    from paperpack.r_tsvm.methods.spectral import top_triplets
    from paperpack.r_tsvm.methods.tsv import tsv_budget

    spec = json.loads(spec_json)
    root = Path(workdir)
    base = LazyStateDict(root / "base")
    experts = [LazyStateDict(root / f"expert{i}") for i in range(spec["experts"])]
    exclude = tuple(spec.get("exclude", ()))
    worst = {"relative_excess": -1.0}
    count = 0
    for key in base:
        if base.shape(key).__len__() != 2 or any(pattern in key for pattern in exclude):
            continue
        deltas = torch.stack([e[key] - base[key] for e in experts])
        k = tsv_budget(deltas.shape[1:], deltas.shape[0])
        errors = {}
        for mode in ("exact", "fast"):
            errors[mode] = [
                float(torch.linalg.matrix_norm(d - (u * s) @ vh))
                for d, (u, s, vh) in zip(deltas, top_triplets(deltas, [k] * len(experts), mode), strict=True)
            ]
        for t, (exact, fast) in enumerate(zip(errors["exact"], errors["fast"], strict=True)):
            excess = fast / exact - 1 if exact > 0 else 0.0
            count += 1
            if excess > worst["relative_excess"]:
                worst = {"relative_excess": excess, "key": key, "task": t, "exact": exact, "fast": fast}
    print(json.dumps({"matrices_x_tasks": count, "worst": worst}))


if __name__ == "__main__":
    function = {
        "models": models,
        "parity-models": parity_models,
        "merge": merge,
        "warm": warm,
        "compare": compare,
        "chat": chat,
        "truncation": truncation,
    }[sys.argv[1]]
    result = function(*sys.argv[2:])
    if result is not None:
        print(json.dumps(result))
