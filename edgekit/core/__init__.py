"""The floor every room stands on: errors, paths and work caches, dtypes, progress, CPU facts."""
