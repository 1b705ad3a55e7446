"""The quick starts in README.md and docs/index.md run as written."""

from paperpack.core.testing.examples import quick_start_test

test_quick_start_runs = quick_start_test(__file__)
