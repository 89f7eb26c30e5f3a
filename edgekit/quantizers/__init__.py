"""Floor 4: one file per quantization method: its math, its pricing and its registry entry (found by
discovery, never listed by hand). Never imports ``runtimes``, ``artifacts``, ``workflows``, ``serve`` or ``ui``.
"""
