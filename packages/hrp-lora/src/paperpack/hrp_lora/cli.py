r"""``paperpack hrp-lora init``: write a PEFT adapter folder initialized by High-Rank Preheating.

Example::

    paperpack hrp-lora init --model base-model --data train.jsonl --rank 8 --preheat-rank 64 \\
        --preheat-steps 50 --preheat-lr 2e-4 --output hrp-init

The folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` as PEFT writes them, plus
``hrp_config.json`` (the settings and the preheat losses). ``PeftModel.from_pretrained(base, "hrp-init",
is_trainable=True)`` loads it on the unmodified base model; train from there.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from paperpack.core.validation import check_bool, check_number

if TYPE_CHECKING:
    from peft import LoraConfig

__all__ = ["COMMAND", "CONFIG_FILE", "LoraSettings", "configure_parser"]

COMMAND = "hrp-lora init"
#: The settings and preheat record written beside the adapter.
CONFIG_FILE = "hrp_config.json"


@dataclass
class LoraSettings:
    """The rank-r LoRA the command initializes (PEFT's ``LoraConfig`` fields a command line needs)."""

    r: int = field(default=8, metadata={"help": "LoRA rank r of the adapter (PEFT's default)."})
    lora_alpha: float = field(
        default=8.0,
        metadata={"help": "LoRA α: the adapter's scaling is α/r (α/√r with rsLoRA). PEFT's default."},
    )
    target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={
            "help": "Module names (or suffixes) to adapt, e.g. q_proj v_proj; 'all-linear' adapts every "
            "linear layer but the output head (ours)."
        },
    )
    lora_dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the adapter's input (PEFT's default)."}
    )
    use_rslora: bool = field(default=False, metadata={"help": "rsLoRA scaling α/√r."})
    use_dora: bool = field(
        default=False, metadata={"help": "DoRA (weight-decomposed LoRA); with init=direction."}
    )

    def __post_init__(self) -> None:
        check_number("r", self.r, minimum=1, integer=True)
        check_number("lora_alpha", self.lora_alpha, greater_than=0)
        check_number("lora_dropout", self.lora_dropout, minimum=0, less_than=1)
        check_bool("use_rslora", self.use_rslora)
        check_bool("use_dora", self.use_dora)
        if not self.target_modules or not all(isinstance(name, str) and name for name in self.target_modules):
            from paperpack.core.errors import ConfigError

            raise ConfigError(f"`target_modules` must name at least one module, got {self.target_modules!r}")

    def lora_config(self) -> LoraConfig:
        """The PEFT config (causal-LM task type)."""
        from peft import LoraConfig

        targets: str | list[str] = (
            "all-linear" if self.target_modules == ["all-linear"] else list(self.target_modules)
        )
        return LoraConfig(
            r=self.r,
            lora_alpha=self.lora_alpha,  # type: ignore[arg-type]  # PEFT types it int; floats work
            target_modules=targets,
            lora_dropout=self.lora_dropout,
            use_rslora=self.use_rslora,
            use_dora=self.use_dora,
            task_type="CAUSAL_LM",
        )


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``init`` subcommand to ``paperpack hrp-lora``."""
    from paperpack.core.arguments import add_config_arguments
    from paperpack.core.commands import add_shared_arguments
    from paperpack.hrp_lora.config import HRPConfig

    commands = parser.add_subparsers(dest="hrp_lora_command", metavar="COMMAND")
    init = commands.add_parser(
        "init",
        help="write a LoRA adapter initialized by High-Rank Preheating",
        description="Preheat a rank-R LoRA on --data for a few steps, initialize a rank-r LoRA from the top "
        "singular directions of its update, and write it as a PEFT adapter folder (plus hrp_config.json) "
        "that PeftModel.from_pretrained loads on the unmodified base model.",
    )
    lora = add_config_arguments(init, LoraSettings, rename={"r": "rank"}, title="the LoRA to initialize")
    hrp = add_config_arguments(init, HRPConfig, title="High-Rank Preheating")
    add_shared_arguments(
        init,
        "model",
        "data",
        "output",
        "overwrite",
        "device",
        "dtype",
        "max_length",
        "batch_size",
        "progress",
        "config",
        required=("model", "data", "output"),
        help={
            "data": "JSON Lines with a 'text' field: the preheat's training texts, cycled if too few",
            "batch_size": "texts per preheat step",
        },
    )
    init.set_defaults(handler=_init, lora_fields=lora, hrp_fields=hrp)


def _init(args: argparse.Namespace) -> int:
    import json

    from paperpack.core.arguments import config_overrides
    from paperpack.core.data import causal_lm_batches, ensure_pad_token, read_jsonl
    from paperpack.core.files import atomic_folder, check_output
    from paperpack.core.hf import load_model_and_tokenizer
    from paperpack.core.validation import check_finite
    from paperpack.hrp_lora.config import HRPConfig
    from paperpack.hrp_lora.initialize import hrp_initialize

    inputs = [args.model, args.data]
    check_output(args.output, command=COMMAND, overwrite=args.overwrite, inputs=inputs)
    lora = LoraSettings(**config_overrides(args, args.lora_fields))
    config = HRPConfig(**config_overrides(args, args.hrp_fields))
    texts = [record["text"] for record in read_jsonl(args.data)]
    model, tokenizer = load_model_and_tokenizer(args.model, device=args.device, dtype=args.dtype)
    ensure_pad_token(tokenizer)
    batches = causal_lm_batches(tokenizer, texts, batch_size=args.batch_size, max_length=args.max_length)
    losses: list[float] = []

    def loss_fn(module: Any, batch: dict[str, Any]) -> Any:
        device = next(module.parameters()).device
        loss = module(**{key: value.to(device) for key, value in batch.items()}).loss
        losses.append(float(loss.detach()))
        return loss

    peft_model = hrp_initialize(
        model, lora.lora_config(), batches, config, loss_fn=loss_fn, progress=args.progress
    )
    adapter = {name: p for name, p in peft_model.named_parameters() if ".default." in name}
    check_finite("the initialized adapter", adapter)
    record = {
        "method": "HRP (arXiv:2502.07739)",
        "base_model": str(args.model),
        "lora": {**vars(lora)},
        "hrp": {**vars(config)},
        "data": {
            "file": str(args.data),
            "texts": len(texts),
            "batch_size": args.batch_size,
            "max_length": args.max_length,
        },
        "preheat_losses": losses,
    }
    with atomic_folder(args.output, command=COMMAND, overwrite=args.overwrite, inputs=inputs) as folder:
        peft_model.save_pretrained(str(folder))
        (folder / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(
        f"wrote {args.output}: a rank-{lora.r} LoRA initialized by HRP (preheat rank "
        f"{config.preheat_rank or f'8·r = {8 * lora.r}'}, {config.preheat_steps} steps, loss "
        f"{losses[0]:.4g} -> {losses[-1]:.4g}); load it with PeftModel.from_pretrained(base, "
        f"{str(args.output)!r}, is_trainable=True)"
    )
    return 0
