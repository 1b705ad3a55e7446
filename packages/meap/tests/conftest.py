from __future__ import annotations

import copy
from typing import Any

import pytest


@pytest.fixture(scope="session")
def meap_lm(tiny_lm: tuple[Any, Any]) -> tuple[Any, Any, int]:
    """A copy of the session's tiny model and tokenizer with the [MASK] token added; do not train in place."""
    from paperpack.meap import add_mask_token

    model, tokenizer = copy.deepcopy(tiny_lm[0]), copy.deepcopy(tiny_lm[1])
    mask_id = add_mask_token(tokenizer, model)
    return model, tokenizer, mask_id
