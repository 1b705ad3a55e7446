import copy

import pytest
import torch

from paperpack.core.errors import CheckpointError, CheckpointNotFoundError, ConfigError
from paperpack.core.hf import (
    SPECIAL_TOKENS,
    benchmark_llama,
    context_length,
    encode_prompts,
    load_model_and_tokenizer,
    machine_defaults,
    sample_completions,
    shared_prefix_length,
    tiny_causal_lm,
    training_args,
)


def test_tiny_causal_lm_is_deterministic_and_tokenizes_anything():
    (m1, t1), (m2, t2) = tiny_causal_lm(seed=1), tiny_causal_lm(seed=1)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert t1.get_vocab() == t2.get_vocab()
    m3, _ = tiny_causal_lm(seed=2)
    assert not torch.equal(m1.model.embed_tokens.weight, m3.model.embed_tokens.weight)
    text = "Ünïcode ✓ and digits 12345 {json: [1, 2]}"
    assert t1.decode(t1(text)["input_ids"], skip_special_tokens=True) == text
    assert t1.unk_token_id not in t1(text)["input_ids"]
    assert "[MASK]" not in t1.get_vocab()
    assert {t1.pad_token, t1.bos_token, t1.eos_token} <= set(SPECIAL_TOKENS)
    assert m1.config.vocab_size == len(t1)


def test_tiny_causal_lm_does_not_touch_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    tiny_causal_lm(seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_causal_lm_overrides_and_bad_input():
    model, tokenizer = tiny_causal_lm(hidden_size=32, num_layers=1, vocab_size=300, tie_word_embeddings=True)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert len(tokenizer) <= 300
    with pytest.raises(ConfigError, match="`vocab_size` must be >= 264"):
        tiny_causal_lm(vocab_size=10)
    with pytest.raises(ConfigError, match="`num_layers`"):
        tiny_causal_lm(num_layers=0)


def test_benchmark_llama_size_and_seed():
    with torch.device("meta"):
        model = benchmark_llama()
    assert 50e6 <= sum(p.numel() for p in model.parameters()) <= 60e6
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    small = [benchmark_llama(seed=seed, num_hidden_layers=1, vocab_size=64) for seed in (3, 3, 4)]
    assert torch.equal(
        small[0].model.layers[0].mlp.up_proj.weight, small[1].model.layers[0].mlp.up_proj.weight
    )
    assert not torch.equal(
        small[0].model.layers[0].mlp.up_proj.weight, small[2].model.layers[0].mlp.up_proj.weight
    )
    assert small[0].config.hidden_size == 512 and small[0].training
    with pytest.raises(ConfigError, match="`seed`"):
        benchmark_llama(seed=-1)


def test_chat_template_marks_assistant_tokens(tiny_lm):
    _, tokenizer = tiny_lm
    messages = [{"role": "user", "content": "what is 2 + 2?"}, {"role": "assistant", "content": "four"}]
    out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(masked) == "four</s>"
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n")


def test_training_args_are_safe_here(tmp_path):
    from trl import SFTConfig

    args = training_args(tmp_path, cls=SFTConfig, max_steps=1)
    assert isinstance(args, SFTConfig)
    if not torch.cuda.is_available():
        assert args.bf16 is False and args.use_cpu is True
    assert training_args(tmp_path, report_to="tensorboard").report_to == ["tensorboard"]
    assert set(machine_defaults()) >= {"bf16", "use_cpu", "report_to"}


@pytest.mark.slow
def test_sft_trainer_steps_on_tiny_model(tmp_path, tiny_lm):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = tiny_lm
    model = copy.deepcopy(model)
    data = Dataset.from_dict(
        {
            "messages": [
                [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": f"{i}"}]
                for i in range(8)
            ]
        }
    )
    args = training_args(
        tmp_path, cls=SFTConfig, max_steps=3, per_device_train_batch_size=4, assistant_only_loss=True,
        logging_steps=1, learning_rate=1e-2, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    assert any("loss" in entry for entry in trainer.state.log_history)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)


def test_load_model_and_tokenizer(tiny_lm_dir, tmp_path):
    model, tokenizer = load_model_and_tokenizer(tiny_lm_dir, device="cpu", dtype="float32")
    assert model.config.vocab_size == len(tokenizer)
    with pytest.raises(CheckpointNotFoundError, match="no config.json"):
        load_model_and_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    torch.save({}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        load_model_and_tokenizer(tmp_path)


def test_sample_completions(tiny_lm):
    model, tokenizer = tiny_lm
    prompts = ["the red", "a model of", "one"]
    out = sample_completions(model, tokenizer, prompts, num_samples=3, max_new_tokens=5, batch_size=2, seed=4)
    again = sample_completions(
        model, tokenizer, prompts, num_samples=3, max_new_tokens=5, batch_size=2, seed=4
    )
    assert [[c.token_ids for c in s] for s in out] == [[c.token_ids for c in s] for s in again]
    assert [len(s) for s in out] == [3, 3, 3]
    for samples in out:
        for completion in samples:
            assert len(completion.token_ids) <= 5
            assert tokenizer.pad_token_id not in completion.token_ids[:-1] or completion.finished
    assert tokenizer.padding_side == "right"
    greedy = sample_completions(model, tokenizer, prompts, do_sample=False, max_new_tokens=4, chat=True)
    assert len(greedy) == 3 and all(len(s) == 1 for s in greedy)
    with pytest.raises(ConfigError, match="greedy"):
        sample_completions(model, tokenizer, prompts, do_sample=False, num_samples=2)
    with pytest.raises(ConfigError, match="single string"):
        sample_completions(model, tokenizer, "the")
    with pytest.raises(ConfigError, match="`top_p`"):
        sample_completions(model, tokenizer, prompts, top_p=0)


def test_left_padded_batches_match_unbatched_greedy(tiny_lm):
    model, tokenizer = tiny_lm
    prompts = ["the red apple", "one"]
    batched = sample_completions(model, tokenizer, prompts, do_sample=False, max_new_tokens=6, batch_size=2)
    single = [
        sample_completions(model, tokenizer, [p], do_sample=False, max_new_tokens=6)[0] for p in prompts
    ]
    assert [s[0].token_ids for s in batched] == [s[0].token_ids for s in single]


_SHARED = "You answer questions about colors, rivers and numbers. Be brief and exact; say why. " * 2
_REQUESTS = ["the red apple?", "a river", "what is 2 + 3 and why is that so", "one", "north", "garden window"]


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gpt2"])
def test_a_shared_prefix_cached_once_gives_the_plain_completions(
    architecture, tiny_lm, tiny_qwen2_dir, tiny_gpt2_dir
):
    from transformers import AutoModelForCausalLM

    model, tokenizer = tiny_lm
    if architecture != "llama":
        folder = tiny_qwen2_dir if architecture == "qwen2" else tiny_gpt2_dir
        model = AutoModelForCausalLM.from_pretrained(folder)
    prompts = [_SHARED + request for request in _REQUESTS]
    lengths: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        for settings in (
            {"do_sample": False, "chat": True},
            {"do_sample": False, "chat": False},
            {"num_samples": 3, "seed": 5, "temperature": 1.5, "chat": True},
        ):
            # batches of 4 and 2 rows, each padded to its own longest rest
            plain = sample_completions(model, tokenizer, prompts, max_new_tokens=10, batch_size=4, **settings)
            lengths.clear()
            shared = sample_completions(
                model, tokenizer, prompts, max_new_tokens=10, batch_size=4, share_prefix=True, **settings
            )
            assert [[c.token_ids for c in s] for s in shared] == [[c.token_ids for c in s] for s in plain]
            ids = encode_prompts(tokenizer, prompts, chat=settings["chat"])
            prefix = shared_prefix_length(ids)
            # the prefix went through the model once; each batch's first pass read only the rest
            assert prefix > 20 and lengths[0] == prefix
            assert max(lengths[1:]) == max(len(i) for i in ids[:4]) - prefix
    finally:
        hook.remove()


def test_shared_prefix_length_keeps_a_token_of_every_prompt_and_odd_models_take_the_plain_path(tiny_lm):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from paperpack.core.hf.generation import _SharedPrefix

    assert shared_prefix_length([]) == 0
    assert shared_prefix_length([[1, 2, 3]]) == 2
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3, 9]]) == 2
    assert shared_prefix_length([[1, 2], [1, 2, 3]]) == 1
    assert shared_prefix_length([[7], [7, 8]]) == 0
    assert shared_prefix_length([[1, 2], [3, 2]]) == 0
    model, tokenizer = tiny_lm
    assert _SharedPrefix.build(model, [[1, 5, 6], [1, 5, 7]]) is not None
    assert _SharedPrefix.build(model, [[1, 5], [2, 5]]) is None
    sliding = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, use_sliding_window=True, sliding_window=4,
            max_window_layers=0,
        )
    ).eval()  # fmt: skip
    assert _SharedPrefix.build(sliding, [[1, 5, 6, 7, 8, 9], [1, 5, 6, 7, 8, 10]]) is None
    prompts = [_SHARED + request for request in _REQUESTS[:3]]
    plain = sample_completions(sliding, tokenizer, prompts, do_sample=False, max_new_tokens=4, batch_size=2)
    shared = sample_completions(
        sliding, tokenizer, prompts, do_sample=False, max_new_tokens=4, batch_size=2, share_prefix=True
    )
    assert [s[0].token_ids for s in shared] == [s[0].token_ids for s in plain]


def test_encode_prompts_gives_the_ids_sample_completions_generates_from(tiny_lm):
    model, tokenizer = tiny_lm
    for chat in (False, True):
        (ids,) = encode_prompts(tokenizer, ["the red apple"], chat=chat)
        (greedy,) = sample_completions(
            model, tokenizer, ["the red apple"], do_sample=False, max_new_tokens=5, chat=chat
        )
        # Greedy decoding from the joined ids reproduces the completion: the prompt ids are the ones generated from.
        full = torch.tensor([ids + greedy[0].token_ids])
        with torch.no_grad():
            logits = model(full).logits[0, len(ids) - 1 : -1]
        assert logits.argmax(-1).tolist() == greedy[0].token_ids
    assert encode_prompts(tokenizer, ["one"], chat=True)[0][0] == tokenizer.bos_token_id
    with pytest.raises(ConfigError, match="single string"):
        encode_prompts(tokenizer, "the")


def test_context_length_and_prompts_that_would_overrun_it(tiny_lm):
    from transformers import GPT2Config

    model, tokenizer = tiny_lm
    assert context_length(model) == 2048
    assert context_length(model.config) == 2048
    assert context_length(GPT2Config(n_positions=64)) == 64
    assert context_length(object()) is None
    with pytest.raises(ConfigError, match=r"prompt 1 has \d+ tokens; with max_new_tokens=2047"):
        sample_completions(model, tokenizer, ["a", "the red apple"], max_new_tokens=2047, batch_size=2)
