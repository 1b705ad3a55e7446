"""``paperpack hrp-lora`` (built in the next step)."""

from __future__ import annotations

import argparse

__all__ = ["configure_parser"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``init`` subcommand to ``paperpack hrp-lora``."""
