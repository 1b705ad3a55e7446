"""On a CUDA device: the selection with bf16 snapshots stacked on the GPU, and the callback in a bf16 Trainer run."""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from torch import nn
from torch.func import functional_call
from transformers import DataCollatorForLanguageModeling, Trainer

from paperpack.core.hf import default_corpus, training_args
from paperpack.sewa import SeWACallback, SeWAConfig, select_snapshots
from paperpack.sewa.callback import snapshot_state

pytestmark = pytest.mark.gpu


def test_selection_on_cuda_with_bf16_snapshots() -> None:
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4)).to(device, torch.bfloat16)
    inputs = torch.randn(64, 16, device=device, dtype=torch.bfloat16)
    targets = model(inputs).detach()
    base = {name: p.detach().cpu() for name, p in model.named_parameters()}
    bad = {2, 5}
    generator = torch.Generator().manual_seed(1)
    window = [
        {k: (v.float() + (2.0 if i in bad else 0.01 * i) * torch.randn(v.shape, generator=generator)).bfloat16()
         for k, v in base.items()}
        for i in range(8)
    ]  # fmt: skip

    def loss_fn(params):
        return ((functional_call(model, params, (inputs,)) - targets).float() ** 2).mean()

    result = select_snapshots(window, loss_fn, SeWAConfig(k=3, iterations=40), device=device)
    assert not set(result.indices) & bad
    for key, value in result.state_dict.items():
        assert value.dtype == torch.bfloat16 and value.device.type == "cpu"
        expected = torch.stack([window[i][key] for i in result.indices]).float().mean(0).bfloat16()
        assert torch.equal(value, expected)


def test_callback_in_a_cuda_trainer(tiny_lm, tmp_path) -> None:
    model, tokenizer = copy.deepcopy(tiny_lm[0]), tiny_lm[1]
    encoded = tokenizer(default_corpus(64, seed=3), truncation=True, max_length=32)
    dataset = Dataset.from_dict({"input_ids": encoded["input_ids"]})
    callback = SeWACallback(SeWAConfig(k=2, iterations=5, mc_samples=2), window=4, snapshot_every=1)
    args = training_args(
        tmp_path, max_steps=6, per_device_train_batch_size=8, save_strategy="no", disable_tqdm=True
    )
    assert not args.use_cpu
    Trainer(
        model=model, args=args, train_dataset=dataset, callbacks=[callback],
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    ).train()  # fmt: skip
    assert callback.result is not None and next(model.parameters()).device.type == "cuda"
    snapshots = callback.store.load()
    expected = {
        k: torch.stack([snapshots[i][k] for i in callback.result.indices]).mean(0) for k in snapshots[0]
    }
    for key, value in snapshot_state(model).items():
        assert torch.equal(value.cpu(), expected[key]), key


def test_sewa_average_on_cuda_searches_in_float32_unless_asked(tiny_lm, tmp_path) -> None:
    import json

    from safetensors import safe_open

    from paperpack.core.cli import main

    model, tokenizer = tiny_lm
    generator = torch.Generator().manual_seed(0)
    for step in (1, 2, 3):
        copy_ = copy.deepcopy(model).to(torch.bfloat16)
        with torch.no_grad():
            for param in copy_.parameters():
                param.add_((0.002 * step * torch.randn(param.shape, generator=generator)).bfloat16())
        copy_.save_pretrained(tmp_path / "run" / f"checkpoint-{step}")
        tokenizer.save_pretrained(tmp_path / "run" / f"checkpoint-{step}")
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"text": line}) for line in default_corpus(8, seed=1)) + "\n")
    argv = ["sewa", "average", "--checkpoints", str(tmp_path / "run"), "--strategy", "sewa", "--k", "2"]
    argv += ["--data", str(data), "--iterations", "2", "--mc-samples", "1", "--device", "cuda"]
    for extra, expected in (([], "float32"), (["--dtype", "auto"], "bfloat16")):
        output = tmp_path / f"out-{expected}"
        assert main([*argv, *extra, "--output", str(output)]) == 0
        with safe_open(output / "model.safetensors", framework="pt") as file:
            assert json.loads(file.metadata()["paperpack_sewa"])["search_dtype"] == expected
            assert file.get_tensor("lm_head.weight").dtype == torch.bfloat16  # the output keeps the dtype
