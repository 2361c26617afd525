"""The checks run with labkit's pytest plugin: services, the graded copy, teaching messages."""

pytest_plugins = ["labkit.pytest_plugin"]
