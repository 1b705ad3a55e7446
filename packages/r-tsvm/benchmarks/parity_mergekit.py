"""Recipe parity with mergekit: one recipe per feature, merged by both tools, compared tensor by tensor.

Small Llama models (6 layers of width 128, a 512-token BPE tokenizer with a chat template, untied head) are
written once: a base, three fine-tunes (base + 0.01 noise), two fine-tunes that add tokens (``<tool>``,
``</tool>``; a special ``<think>``) and one with another chat template. Each recipe is written once and given
to both tools as is (where our spelling differs, both spellings are shown); the outputs are compared key by
key (embeddings by token when the vocabularies differ), with the output config's layer count and vocabulary
size, and the chat template's rendering of a fixed conversation.

mergekit is LGPL-3.0 and never a dependency of this package: install it into its own environment,

    uv venv /work/venvs/mergekit
    VIRTUAL_ENV=/work/venvs/mergekit uv pip install mergekit

and run (from the workspace root)

    uv run --no-sync python packages/r-tsvm/benchmarks/parity_mergekit.py --mergekit /work/venvs/mergekit/bin/mergekit-yaml
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import _children
import yaml
from _harness import load_average

#: Recipes by feature: (name, what it checks, recipe with {placeholders} for the model folders, note).
FEATURES: list[tuple[str, str, dict[str, Any]]] = [
    (
        "base-listed-ties",
        "base model listed under models: skipped (TIES, per-model weight and density)",
        {
            "merge_method": "ties",
            "base_model": "{base}",
            "models": [
                {"model": "{base}"},
                *(
                    {"model": f"{{expert{i}}}", "parameters": {"weight": 1.0, "density": 0.5}}
                    for i in range(3)
                ),
            ],
        },
    ),
    (
        "base-listed-task-arithmetic",
        "base model listed under models, with a weight of its own: skipped",
        {
            "merge_method": "task_arithmetic",
            "base_model": "{base}",
            "models": [
                {"model": "{base}", "parameters": {"weight": 1.0}},
                *({"model": f"{{expert{i}}}", "parameters": {"weight": 0.5}} for i in range(3)),
            ],
        },
    ),
    (
        "slerp-base",
        "SLERP measures t from base_model (listed second here)",
        {
            "merge_method": "slerp",
            "base_model": "{base}",
            "models": [{"model": "{expert0}"}, {"model": "{base}"}],
            "parameters": {"t": 0.3},
        },
    ),
    (
        "slerp-gradient-filters",
        "gradients over layers and filters by module (mergekit's canonical SLERP recipe)",
        {
            "merge_method": "slerp",
            "base_model": "{expert0}",
            "models": [{"model": "{expert0}"}, {"model": "{expert1}"}],
            "parameters": {
                "t": [
                    {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                    {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
                    {"value": 0.5},
                ]
            },
        },
    ),
    (
        "weight-gradients",
        "per-model weight gradients (task arithmetic)",
        {
            "merge_method": "task_arithmetic",
            "base_model": "{base}",
            "models": [
                {"model": "{expert0}", "parameters": {"weight": [1.0, 0.0]}},
                {"model": "{expert1}", "parameters": {"weight": [0.0, 0.5, 1.0]}},
            ],
        },
    ),
    (
        "per-model-parameters",
        "per-model density (TIES), gamma (Breadcrumbs) with filters",
        {
            "merge_method": "breadcrumbs",
            "base_model": "{base}",
            "models": [
                {"model": "{expert0}", "parameters": {"weight": 0.5, "density": 0.7, "gamma": 0.02}},
                {
                    "model": "{expert1}",
                    "parameters": {
                        "weight": 1.0,
                        "density": [{"filter": "mlp", "value": 0.5}, {"value": 0.9}],
                        "gamma": 0.05,
                    },
                },
                {"model": "{expert2}", "parameters": {"weight": 1.5, "density": 0.8, "gamma": 0.01}},
            ],
        },
    ),
    (
        "passthrough-slices",
        "slices / layer_range / passthrough: 4 + 4 layers stacked (a frankenmerge)",
        {
            "merge_method": "passthrough",
            "slices": [
                {"sources": [{"model": "{expert0}", "layer_range": [0, 4]}]},
                {"sources": [{"model": "{expert1}", "layer_range": [2, 6]}]},
            ],
        },
    ),
    (
        "passthrough-scale",
        "passthrough with a per-source scale by filter",
        {
            "merge_method": "passthrough",
            "slices": [
                {"sources": [{"model": "{expert0}", "layer_range": [0, 3]}]},
                {
                    "sources": [
                        {
                            "model": "{expert1}",
                            "layer_range": [3, 6],
                            "parameters": {
                                "scale": [
                                    {"filter": "o_proj", "value": 0.0},
                                    {"filter": "down_proj", "value": 0.5},
                                    {"value": 1.0},
                                ]
                            },
                        }
                    ]
                },
            ],
        },
    ),
    (
        "slerp-slices",
        "SLERP by slices, base among the sources, t gradient per slice",
        {
            "merge_method": "slerp",
            "base_model": "{base}",
            "slices": [
                {
                    "sources": [
                        {"model": "{base}", "layer_range": [0, 3]},
                        {"model": "{expert0}", "layer_range": [0, 3]},
                    ],
                    "parameters": {"t": [0.0, 1.0]},
                },
                {
                    "sources": [
                        {"model": "{base}", "layer_range": [3, 6]},
                        {"model": "{expert0}", "layer_range": [3, 6]},
                    ],
                    "parameters": {"t": 0.5},
                },
            ],
        },
    ),
    (
        "tokenizer-union",
        "tokenizer_source: union (two fine-tunes add tokens; embeddings aligned by token)",
        {
            "merge_method": "task_arithmetic",
            "base_model": "{base}",
            "models": [
                {"model": "{tokens_a}", "parameters": {"weight": 1.0}},
                {"model": "{tokens_b}", "parameters": {"weight": 1.0}},
                {"model": "{expert0}", "parameters": {"weight": 1.0}},
            ],
            "tokenizer_source": "union",
        },
    ),
    (
        "tokenizer-base",
        "tokenizer_source: base (added tokens dropped, rows aligned by token)",
        {
            "merge_method": "linear",
            "base_model": "{base}",
            "models": [
                {"model": "{tokens_a}", "parameters": {"weight": 1.0}},
                {"model": "{base}", "parameters": {"weight": 1.0}},
            ],
            "tokenizer_source": "base",
        },
    ),
    (
        "chat-template-chatml",
        "chat_template: chatml",
        {
            "merge_method": "linear",
            "models": [
                {"model": "{expert0}", "parameters": {"weight": 1.0}},
                {"model": "{expert1}", "parameters": {"weight": 1.0}},
            ],
            "chat_template": "chatml",
        },
    ),
    (
        "chat-template-auto",
        "chat_template: auto (the most common among the inputs)",
        {
            "merge_method": "linear",
            "models": [
                {"model": "{template}", "parameters": {"weight": 1.0}},
                {"model": "{expert0}", "parameters": {"weight": 1.0}},
                {"model": "{expert1}", "parameters": {"weight": 1.0}},
            ],
            "chat_template": "auto",
        },
    ),
    (
        "chat-template-literal",
        "chat_template: a Jinja template given in full",
        {
            "merge_method": "linear",
            "models": [{"model": "{expert0}", "parameters": {"weight": 1.0}}],
            "chat_template": "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}",
        },
    ),
    (
        "model_stock",
        "new method: Model Stock",
        {
            "merge_method": "model_stock",
            "base_model": "{base}",
            "models": [{"model": f"{{expert{i}}}"} for i in range(3)],
        },
    ),
    (
        "model_stock-filter-wise",
        "new method: Model Stock, one ratio per row",
        {
            "merge_method": "model_stock",
            "base_model": "{base}",
            "models": [{"model": f"{{expert{i}}}"} for i in range(3)],
            "parameters": {"filter_wise": True},
        },
    ),
    (
        "breadcrumbs_ties",
        "new method: Breadcrumbs + TIES",
        {
            "merge_method": "breadcrumbs_ties",
            "base_model": "{base}",
            "models": [{"model": f"{{expert{i}}}", "parameters": {"weight": 1.0}} for i in range(3)],
            "parameters": {"density": 0.8, "gamma": 0.05},
        },
    ),
    (
        "della_linear",
        "new method: DELLA linear at density 1 (deterministic; random masks cannot match)",
        {
            "merge_method": "della_linear",
            "base_model": "{base}",
            "models": [{"model": f"{{expert{i}}}", "parameters": {"weight": 0.5}} for i in range(3)],
            "parameters": {"density": 1.0, "epsilon": 0.0},
        },
    ),
    (
        "nuslerp-base",
        "new method: NuSLERP of task vectors (weights 1 : 2)",
        {
            "merge_method": "nuslerp",
            "base_model": "{base}",
            "models": [
                {"model": "{expert0}", "parameters": {"weight": 1.0}},
                {"model": "{expert1}", "parameters": {"weight": 2.0}},
            ],
        },
    ),
    (
        "nuslerp-rows",
        "new method: NuSLERP of the models, row by row",
        {
            "merge_method": "nuslerp",
            "models": [
                {"model": "{expert0}", "parameters": {"weight": 1.0}},
                {"model": "{expert1}", "parameters": {"weight": 1.0}},
            ],
            "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True},
        },
    ),
    (
        "sce",
        "new method: SCE (select_topk 0.5)",
        {
            "merge_method": "sce",
            "base_model": "{base}",
            "models": [{"model": f"{{expert{i}}}"} for i in range(3)],
            "parameters": {"select_topk": 0.5},
        },
    ),
    (
        "ties-defaults-differ",
        "TIES without density: mergekit keeps every entry (density 1), we trim to the paper's 0.2",
        {
            "merge_method": "ties",
            "base_model": "{base}",
            "models": [{"model": f"{{expert{i}}}", "parameters": {"weight": 1.0}} for i in range(3)],
        },
    ),
]


def fill(value: Any, folders: dict[str, str]) -> Any:
    """The recipe with ``{name}`` placeholders replaced by folders."""
    if isinstance(value, dict):
        return {k: fill(v, folders) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, folders) for v in value]
    if isinstance(value, str) and value.startswith("{") and value.endswith("}") and value[1:-1] in folders:
        return folders[value[1:-1]]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mergekit", default="/work/venvs/mergekit/bin/mergekit-yaml", help="mergekit-yaml path"
    )
    parser.add_argument("--workdir", default="/tmp/rtsvm-parity", help="where models and outputs go")
    parser.add_argument("--only", nargs="+", help="run only these features")
    args = parser.parse_args()
    import subprocess

    from paperpack.r_tsvm import merge_checkpoints

    workdir = Path(args.workdir)
    folders = _children.parity_models(str(workdir / "models"))
    print(f"load average before: {load_average()}", flush=True)
    rows = []
    for name, what, recipe in FEATURES:
        if args.only and name not in args.only:
            continue
        filled = fill(recipe, folders)
        filled.setdefault("dtype", "float32")
        folder = workdir / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        (folder / "recipe.yaml").write_text(yaml.safe_dump(filled, sort_keys=False))
        ours, theirs = folder / "ours", folder / "mergekit"
        merge_checkpoints(folder / "recipe.yaml", ours, progress=False)
        done = subprocess.run(
            [args.mergekit, str(folder / "recipe.yaml"), str(theirs), "--quiet", "--random-seed", "0"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            rows.append(
                {"feature": name, "what": what, "error": "mergekit: " + done.stderr.strip().splitlines()[-1]}
            )
            print(json.dumps(rows[-1]), flush=True)
            continue
        result = _children.compare(str(ours), str(theirs))
        chats = [_children.chat(str(path)) for path in (ours, theirs)]
        result.update(
            feature=name, what=what, chat_equal=chats[0] == chats[1], vocab=[c["vocab"] for c in chats]
        )
        rows.append(result)
        print(json.dumps(result), flush=True)
    print(f"load average after: {load_average()}")
    print()
    print("| feature | what | max abs diff (scale) | config | chat template, vocabulary |")
    print("|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['feature']} | {row['what']} | {row['error']} | | |")
            continue
        config = "same" if not row["config_differs"] else json.dumps(row["config_differs"])
        keys = "" if row["keys_equal"] else " (keys differ)"
        chat = (
            "same" if row["chat_equal"] else "differs"
        ) + f", {row['vocab'][0]} / {row['vocab'][1]} tokens"
        print(
            f"| {row['feature']} | {row['what']} | {row['max_diff']:.1e} ({row['scale']:.2f}){keys} | {config} "
            f"| {chat} |"
        )


if __name__ == "__main__":
    main()
