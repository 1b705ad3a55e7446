"""transformers / TRL integration: stateful callbacks, a tiny model, training arguments, generation."""

from paperpack.core.hf.callbacks import (
    STATE_FOLDER,
    ArgumentsAsJson,
    StatefulCallback,
    read_callback_state,
    write_callback_state,
)
from paperpack.core.hf.generation import (
    Completion,
    context_length,
    encode_prompts,
    sample_completions,
    shared_prefix_length,
)
from paperpack.core.hf.lora import lora_config, wrap_lora
from paperpack.core.hf.tiny import (
    BENCHMARK_LLAMA,
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    benchmark_llama,
    default_corpus,
    tiny_causal_lm,
    tiny_tokenizer,
)
from paperpack.core.hf.training import (
    ARGUMENTS_FILE,
    check_training_args,
    command_training_args,
    load_model_and_tokenizer,
    machine_defaults,
    save_trained_model,
    training_args,
    write_arguments_json,
)

__all__ = [
    "ARGUMENTS_FILE",
    "BENCHMARK_LLAMA",
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "STATE_FOLDER",
    "ArgumentsAsJson",
    "Completion",
    "StatefulCallback",
    "benchmark_llama",
    "check_training_args",
    "command_training_args",
    "context_length",
    "default_corpus",
    "encode_prompts",
    "load_model_and_tokenizer",
    "lora_config",
    "machine_defaults",
    "read_callback_state",
    "sample_completions",
    "save_trained_model",
    "shared_prefix_length",
    "tiny_causal_lm",
    "tiny_tokenizer",
    "training_args",
    "wrap_lora",
    "write_arguments_json",
    "write_callback_state",
]
