"""Running a compiled Mediator: route each sequence, then run the dense model with the chosen sparse experts.

The routed tensors of the dense model are set to W = D + Σ_i w_i S_i for a routing choice and kept so until
another choice is needed, so consecutive batches with the same choice cost nothing extra. A batch whose
sequences route differently is split into one group per choice; each group runs on its own weights and the
results are put back in the batch's order. One decision per sequence, made on the prompt and reused for every
generated token.

Not thread-safe: a ``MediatorModel`` changes its own weights in place.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from paperpack.core.checkpoints import PathLike, load_state_dict
from paperpack.core.device import resolve_device, resolve_dtype
from paperpack.core.errors import CheckpointError, CheckpointNotFoundError, ConfigError
from paperpack.core.files import atomic_folder
from paperpack.merge_router.compile import (
    COMPILE_COMMAND,
    CONFIG_NAME,
    EXPERTS_FOLDER,
    FORMAT_VERSION,
    ROUTER_FILE,
    expert_file,
)
from paperpack.merge_router.config import MediatorConfig
from paperpack.merge_router.router import (
    Router,
    Routing,
    decide,
    embedding_features,
    hidden_features,
    save_router,
)
from paperpack.merge_router.sparse import INDEX_SUFFIX, VALUE_SUFFIX, add_sparse

__all__ = ["MediatorModel"]

#: generate() options whose outputs cannot be merged across routing groups.
_SINGLE_GROUP_OPTIONS = ("return_dict_in_generate", "output_scores", "output_logits", "streamer")


class MediatorModel(nn.Module):
    """A compiled Mediator: the dense model, the sparse experts of the routed tensors, and the router.

    Build it with :meth:`from_pretrained`. ``model`` is the transformers model (its routed tensors hold the
    weights of the last routing choice used), ``tokenizer`` its tokenizer, ``tasks`` the task names.

    Examples:
        >>> from paperpack.merge_router import MediatorModel
        >>> mediator = MediatorModel.from_pretrained("mediator")  # doctest: +SKIP
        >>> mediator.route(["sort: 3 1 2 =>"])  # doctest: +SKIP
        [Routing(experts=('sort',), weights=(1.0,), confidence=0.99)]
        >>> batch = mediator.tokenizer(["sort: 3 1 2 =>"], return_tensors="pt")  # doctest: +SKIP
        >>> mediator.generate(**batch, max_new_tokens=4)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        router: Router,
        experts: Mapping[str, Mapping[str, tuple[Tensor, Tensor]]],
        config: MediatorConfig,
        description: Mapping[str, Any],
    ) -> None:
        super().__init__()
        self.model: Any = model
        self.router = router
        self.tokenizer = tokenizer
        self.config = config
        self.description = dict(description)
        self.tasks: list[str] = list(description["tasks"])
        self.routed_keys: list[str] = list(description["routed_keys"])
        parameters = dict(model.named_parameters())
        missing = [key for key in self.routed_keys if key not in parameters]
        if missing:
            raise CheckpointError(
                f"the dense model has no parameter {missing[0]!r}, which the sparse experts route"
            )
        self._parameters_by_key = {key: parameters[key] for key in self.routed_keys}
        self._dense = {key: parameter.detach().clone() for key, parameter in self._parameters_by_key.items()}
        self._experts = {
            task: {
                key: (indices.to(parameter.device, torch.int64), values.to(parameter))
                for key, parameter in self._parameters_by_key.items()
                for indices, values in [experts[task][key]]
            }
            for task in self.tasks
        }
        self._active: tuple[tuple[str, float], ...] = ()

    # ---- loading and saving ----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        folder: PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> MediatorModel:
        """Load a folder written by :func:`~paperpack.merge_router.compile_mediator` or ``save_pretrained``.

        Args:
            folder: the compiled folder.
            device: where the model runs (None: "auto", CUDA when available, else the CPU).
            dtype: the model's dtype (None: the dtype stored in the folder).

        Raises:
            CheckpointNotFoundError: when the folder or one of its files is missing.
            CheckpointError: for a folder whose files do not fit together.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from paperpack.core.data import ensure_pad_token

        path = Path(folder)
        description = _read_description(path)
        config = MediatorConfig(**description["config"])
        run_device = resolve_device("auto" if device is None else device)
        torch_dtype: Any = "auto" if dtype is None else resolve_dtype(dtype, run_device)
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        model = model.to(run_device).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        ensure_pad_token(tokenizer)
        router_info = description["router"]
        router = Router(router_info["in_features"], len(description["tasks"]), router_info["hidden_size"])
        router.load_state_dict(load_state_dict(path / EXPERTS_FOLDER / ROUTER_FILE))
        experts = {
            task: _read_expert(path, task, description["routed_keys"]) for task in description["tasks"]
        }
        return cls(
            model,
            tokenizer,
            router=router.to(run_device).eval(),
            experts=experts,
            config=config,
            description=description,
        )

    def save_pretrained(self, folder: PathLike, *, overwrite: bool = False) -> Path:
        """Write the Mediator to ``folder`` (the layout of a compiled folder), atomically.

        Args:
            folder: a new or empty folder, or (with ``overwrite``) an earlier Mediator folder.
            overwrite: replace an earlier Mediator folder.

        Returns:
            The folder.
        """
        from safetensors.torch import save_file

        self.use(())
        with atomic_folder(folder, command=COMPILE_COMMAND, overwrite=overwrite, flag="folder") as staging:
            self.model.save_pretrained(staging)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(staging)
            (staging / EXPERTS_FOLDER).mkdir()
            for task in self.tasks:
                tensors: dict[str, Tensor] = {}
                for key, (indices, values) in self._experts[task].items():
                    numel = self._parameters_by_key[key].numel()
                    tensors[key + INDEX_SUFFIX] = indices.to(
                        torch.int32 if numel < 2**31 else torch.int64
                    ).cpu()
                    tensors[key + VALUE_SUFFIX] = values.cpu().contiguous()
                save_file(tensors, staging / expert_file(task), metadata={"format": "pt"})
            save_router(self.router, staging / EXPERTS_FOLDER / ROUTER_FILE)
            (staging / CONFIG_NAME).write_text(json.dumps(self.description, indent=2) + "\n")
        return Path(folder)

    # ---- routing ---------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """The device of the dense model."""
        device: torch.device = next(self.model.parameters()).device
        return device

    @torch.no_grad()
    def route(self, texts: Sequence[str]) -> list[Routing]:
        """Route each text: the chosen experts, their weights and the router's confidence.

        Raises:
            ConfigError: for something that is not a list of strings.
        """
        if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
            raise ConfigError("`texts` must be a list of strings")
        if not texts:
            return []
        batch = self.tokenizer(list(texts), return_tensors="pt", padding=True)
        return self.route_inputs(batch["input_ids"], batch["attention_mask"])

    @torch.no_grad()
    def route_inputs(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> list[Routing]:
        """Route tokenized sequences (the prompts of a batch): one :class:`Routing` per row."""
        input_ids = input_ids.to(self.device)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(self.device)
        layer = self.config.router_layer
        if layer == 0:
            weight = self.model.get_input_embeddings().weight
            embedding = self._dense_value(weight)
            features = embedding_features(embedding, input_ids, mask, self.config.router_features)
        else:
            self.use(())
            features = hidden_features(self.model, input_ids, mask, layer, self.config.router_features)
        return decide(self.router(features), self.tasks, self.config)

    def _dense_value(self, parameter: Tensor) -> Tensor:
        for key, routed in self._parameters_by_key.items():
            if routed is parameter:
                return self._dense[key]
        return parameter

    def _routings(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        task: str | Sequence[str | None] | None,
        routing: Sequence[Routing] | None,
    ) -> list[Routing]:
        rows = input_ids.shape[0]
        if routing is not None:
            if task is not None:
                raise ConfigError("give `task` or `routing`, not both")
            if len(routing) != rows or not all(isinstance(r, Routing) for r in routing):
                raise ConfigError(f"`routing` must hold one Routing per sequence ({rows})")
            for choice in routing:
                self._check_tasks(choice.experts)
            return list(routing)
        tasks: list[str | None] = [task] * rows if task is None or isinstance(task, str) else list(task)
        if len(tasks) != rows:
            raise ConfigError(f"`task` must be one task name or one per sequence ({rows}), got {len(tasks)}")
        self._check_tasks([name for name in tasks if name is not None])
        unforced = [row for row, name in enumerate(tasks) if name is None]
        routed = (
            self.route_inputs(
                input_ids[unforced], None if attention_mask is None else attention_mask[unforced]
            )
            if unforced
            else []
        )
        decided = dict(zip(unforced, routed, strict=True))
        return [decided[row] if name is None else Routing.forced(name) for row, name in enumerate(tasks)]

    def _check_tasks(self, names: Sequence[str]) -> None:
        for name in names:
            if name not in self.tasks:
                raise ConfigError(f"unknown task {name!r}; this Mediator's tasks are {', '.join(self.tasks)}")

    # ---- the routed weights ----------------------------------------------------------------------------

    @torch.no_grad()
    def use(self, choice: Routing | tuple[tuple[str, float], ...]) -> None:
        """Set the routed tensors to D + Σ_i w_i S_i for ``choice`` (a Routing, or () for the dense model)."""
        key = choice.key if isinstance(choice, Routing) else tuple(choice)
        if key == self._active:
            return
        for name, parameter in self._parameters_by_key.items():
            parameter.copy_(self._dense[name])
            add_sparse(parameter, ((*self._experts[task][name], weight) for task, weight in key))
        self._active = key

    def _groups(self, routings: Sequence[Routing]) -> dict[tuple[tuple[str, float], ...], list[int]]:
        groups: dict[tuple[tuple[str, float], ...], list[int]] = {}
        for row, choice in enumerate(routings):
            groups.setdefault(choice.key, []).append(row)
        return groups

    @staticmethod
    def _rows(values: Mapping[str, Any], rows: list[int], batch: int) -> dict[str, Any]:
        index = torch.tensor(rows)
        return {
            name: value[index.to(value.device)]
            if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch
            else value
            for name, value in values.items()
        }

    # ---- forward and generate --------------------------------------------------------------------------

    @torch.no_grad()
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        task: str | Sequence[str | None] | None = None,
        routing: Sequence[Routing] | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """The routed model's logits, (batch, tokens, vocabulary).

        Each sequence is routed on its own tokens, unless ``task`` forces an expert (one name, or one per
        sequence with None for "route it") or ``routing`` gives the decisions (from :meth:`route`, say: route
        on a prompt, score its continuation).

        Raises:
            ConfigError: for an unknown task or a ``routing`` of the wrong length.
        """
        input_ids = input_ids.to(self.device)
        attention_mask = None if attention_mask is None else attention_mask.to(self.device)
        routings = self._routings(input_ids, attention_mask, task, routing)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs}
        batch = input_ids.shape[0]
        logits: Tensor | None = None
        for key, rows in self._groups(routings).items():
            self.use(key)
            part = self.model(**self._rows(inputs, rows, batch)).logits
            if logits is None:
                logits = part.new_empty((batch, *part.shape[1:]))
            logits[torch.tensor(rows, device=part.device)] = part
        if logits is None:
            raise ConfigError("`input_ids` holds no sequence")
        return logits

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        task: str | Sequence[str | None] | None = None,
        routing: Sequence[Routing] | None = None,
        **generate_kwargs: Any,
    ) -> Tensor:
        """``model.generate`` with each sequence routed on its prompt, once, for all of its tokens.

        A batch may mix routing choices: each group of sequences with one choice is generated on its weights,
        and the outputs are right-padded with the pad token to one length, in the batch's order.

        Args:
            input_ids: the prompts (left-padded for batched generation, as for any decoder).
            attention_mask: their attention mask.
            task: force an expert: one task name, or one per sequence (None: route that one).
            routing: the decisions, one per sequence (instead of routing here).
            **generate_kwargs: passed to ``generate`` (``max_new_tokens``, ``do_sample``, ...).

        Returns:
            The generated ids, (batch, tokens).

        Raises:
            ConfigError: for an unknown task, or output options that cannot span routing groups
                (``return_dict_in_generate`` and the like) with a batch that mixes choices.
        """
        if input_ids is None:
            raise ConfigError("`input_ids` is required (pass the tokenizer's output: generate(**batch, ...))")
        input_ids = input_ids.to(self.device)
        attention_mask = None if attention_mask is None else attention_mask.to(self.device)
        routings = self._routings(input_ids, attention_mask, task, routing)
        groups = self._groups(routings)
        if len(groups) > 1:
            used = [name for name in _SINGLE_GROUP_OPTIONS if generate_kwargs.get(name)]
            if used:
                raise ConfigError(
                    f"`{used[0]}` needs one routing choice per batch; this batch has {len(groups)}"
                )
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **generate_kwargs}
        batch = input_ids.shape[0]
        outputs: list[tuple[list[int], Tensor]] = []
        for key, rows in groups.items():
            self.use(key)
            outputs.append((rows, self.model.generate(**self._rows(inputs, rows, batch))))
        if len(outputs) == 1:
            return outputs[0][1]
        length = max(part.shape[1] for _, part in outputs)
        result = input_ids.new_full((batch, length), self._pad_id())
        for rows, part in outputs:
            result[torch.tensor(rows, device=part.device), : part.shape[1]] = part
        return result

    def _pad_id(self) -> int:
        for candidate in (
            getattr(getattr(self.model, "generation_config", None), "pad_token_id", None),
            getattr(self.tokenizer, "pad_token_id", None),
            getattr(self.tokenizer, "eos_token_id", None),
        ):
            if isinstance(candidate, int):
                return candidate
        return 0

    def routed_parameters(self) -> Iterator[tuple[str, Tensor]]:
        """The routed parameters of the dense model, by key."""
        yield from self._parameters_by_key.items()


def _read_description(path: Path) -> dict[str, Any]:
    file = path / CONFIG_NAME
    if not path.is_dir():
        raise CheckpointNotFoundError(f"{os.fspath(path)!r} is not a folder")
    if not file.is_file():
        raise CheckpointNotFoundError(
            f"{os.fspath(path)!r} is not a Mediator folder (no {CONFIG_NAME}); compile one with "
            "`paperpack merge-router compile`"
        )
    try:
        description = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{file} is not valid JSON: {error}") from None
    needed = ("format_version", "tasks", "routed_keys", "config", "router")
    if not isinstance(description, dict) or any(name not in description for name in needed):
        raise CheckpointError(f"{file} lacks one of {', '.join(needed)}")
    if description["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{file} has format version {description['format_version']}; this paperpack-merge-router reads "
            f"{FORMAT_VERSION}"
        )
    return description


def _read_expert(path: Path, task: str, keys: Sequence[str]) -> dict[str, tuple[Tensor, Tensor]]:
    state = load_state_dict(path / expert_file(task))
    wanted = {key + suffix for key in keys for suffix in (INDEX_SUFFIX, VALUE_SUFFIX)}
    if set(state) != wanted:
        odd = sorted(set(state) ^ wanted)[0]
        raise CheckpointError(f"{path / expert_file(task)} does not match {CONFIG_NAME}: {odd!r}")
    return {key: (state[key + INDEX_SUFFIX], state[key + VALUE_SUFFIX]) for key in keys}
