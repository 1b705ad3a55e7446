"""transformers / TRL integration: stateful callbacks, a tiny model, training arguments, generation."""

from paperpack.core.hf.callbacks import (
    STATE_FOLDER,
    StatefulCallback,
    read_callback_state,
    write_callback_state,
)
from paperpack.core.hf.generation import (
    Completion,
    context_length,
    encode_prompts,
    sample_completions,
)
from paperpack.core.hf.tiny import (
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    default_corpus,
    tiny_causal_lm,
    tiny_tokenizer,
)
from paperpack.core.hf.training import load_model_and_tokenizer, machine_defaults, training_args

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "STATE_FOLDER",
    "Completion",
    "StatefulCallback",
    "context_length",
    "default_corpus",
    "encode_prompts",
    "load_model_and_tokenizer",
    "machine_defaults",
    "read_callback_state",
    "sample_completions",
    "tiny_causal_lm",
    "tiny_tokenizer",
    "training_args",
    "write_callback_state",
]
