"""CUDA checks: restore in bfloat16, a bf16 Trainer run, and the memory targets measured as CUDA peaks.

Run by the nox gpu sessions (`pytest -m gpu`); skipped without CUDA.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import DataCollatorForLanguageModeling, LlamaConfig, LlamaForCausalLM

from paperpack.core.device import MemoryMeter
from paperpack.core.hf import default_corpus, tiny_causal_lm, training_args
from paperpack.tezo import METHODS, ZOConfig, ZOOptimizer, ZOTrainer, zo_state_bytes

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("method", METHODS)
def test_restore_on_cuda_is_exact(method: str, dtype: torch.dtype) -> None:
    """Perturb-and-restore on CUDA leaves the weights bit-identical (lr 0: the update adds exact zeros)."""
    model, tokenizer = tiny_causal_lm()
    model = model.to("cuda", dtype).eval()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ids = tokenizer(["the model and the data"] * 4, return_tensors="pt")["input_ids"].cuda()
    opt = ZOOptimizer(model.parameters(), method=method, lr=0.0, rank=4)
    for _ in range(50):
        opt.step(lambda: model(input_ids=ids, labels=ids).loss)
    for key, value in model.state_dict().items():
        assert value.dtype == dtype
        assert torch.equal(value, start[key]), key


def test_bf16_trainer_on_cuda(tmp_path: Path) -> None:
    """``bf16=True`` really runs the forward passes in bfloat16 (autocast), and the loss stays finite."""
    model, tokenizer = tiny_causal_lm()
    lines = default_corpus(num_lines=32, seed=1)
    data = [{"input_ids": tokenizer(line, truncation=True, max_length=24)["input_ids"]} for line in lines]
    args = training_args(
        tmp_path, cls=ZOConfig, bf16=True, max_steps=5, per_device_train_batch_size=8, learning_rate=1e-3,
        save_strategy="no", zo_method="tezo_adam", zo_rank=4,
    )  # fmt: skip
    seen: list[torch.dtype] = []
    model.model.layers[0].mlp.down_proj.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    trainer = ZOTrainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert seen and set(seen) == {torch.bfloat16}, seen


def _peak(method: str) -> tuple[int, int]:
    config = LlamaConfig(
        vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=8, max_position_embeddings=512, tie_word_embeddings=False,
    )  # fmt: skip
    batch = torch.randint(0, 32000, (8, 64), device="cuda")
    torch.cuda.empty_cache()
    with MemoryMeter("cuda") as meter:
        model = LlamaForCausalLM(config).cuda().eval()
        opt = ZOOptimizer(model.parameters(), method=method, lr=1e-6, rank=8)
        for _ in range(2):
            opt.step(lambda: model(input_ids=batch, labels=batch).loss)
    return zo_state_bytes(opt), meter.growth_bytes


def test_memory_on_cuda() -> None:
    """TeZO-Adam on a 58M Llama, batch 8 x 64: persistent state <= 40% of MeZO-Adam's (the issue's target), and a
    peak at the floor of any zeroth-order method: MeZO-SGD's (weights + one forward pass) plus its own state.

    The issue's second target, a peak <= 45% of MeZO-Adam's, is not asserted: at this batch, with the HF loss,
    the logits and their log-softmax put the floor itself near 45% on CUDA,
    so the ratio is set by the batch, not by the optimizer. docs/results.md gives the measured ratios.
    """
    tezo_state, tezo_peak = _peak("tezo_adam")
    mezo_state, mezo_peak = _peak("mezo_adam")
    floor_state, floor_peak = _peak("mezo_sgd")
    print(f"peak vs MeZO-Adam: TeZO-Adam {tezo_peak / mezo_peak:.4f}, MeZO-SGD {floor_peak / mezo_peak:.4f}")
    assert floor_state == 0
    assert tezo_state <= 0.40 * mezo_state
    assert tezo_peak <= floor_peak + tezo_state + 2**20
