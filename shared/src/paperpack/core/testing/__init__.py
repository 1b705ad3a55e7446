"""Test helpers: the pytest plugin (markers, offline settings, tiny-model fixtures) and contract checks.

Packages reuse the contracts from :mod:`paperpack.core.testing.contracts`; the plugin is
:mod:`paperpack.core.testing.plugin`.
"""
