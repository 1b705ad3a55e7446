# Every test run in the workspace uses the core's pytest plugin: markers, offline settings, tiny-model fixtures.
pytest_plugins = ["paperpack.core.testing.plugin"]
