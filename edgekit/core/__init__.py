"""Floor 1: what every room stands on: errors, paths and the work folder, the dtype table, progress,
quiet third-party output, CPU features and native-build facts. Imports nothing else of edgekit.
"""

__version__ = "0.1.0"  # the one home of the version (pyproject.toml reads it)
