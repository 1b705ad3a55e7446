"""paperpack-core: checkpoint IO, devices, transformers / TRL integration and the ``paperpack`` command.

Import the modules you need; this package imports nothing heavy on its own:

- :mod:`paperpack.core.checkpoints`: lazy safetensors reads, atomic sharded writes, streaming merges.
- :mod:`paperpack.core.device`: devices, dtypes, seeding, :class:`~paperpack.core.device.MemoryMeter`.
- :mod:`paperpack.core.hf`: stateful Trainer callbacks, ``tiny_causal_lm()``, training arguments, sampling.
- :mod:`paperpack.core.demo`, :mod:`paperpack.core.cli`: demos and the ``paperpack`` command.
- :mod:`paperpack.core.errors`, :mod:`paperpack.core.validation`, :mod:`paperpack.core.registry`.
- :mod:`paperpack.core.testing`: the pytest plugin and contract checks packages reuse.
"""

from importlib.metadata import version

__all__ = ["__version__"]

__version__ = version("paperpack-core")
