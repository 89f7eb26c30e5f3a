"""Floor 3: memory before loading: device profiles, bytes (weights, KV cache, activations), load peaks,
the plan and the guard (admit or refuse; it never packs or loads). Prices from ``Entry`` fields, never
from a method's module. Imports ``core``, ``models``, ``variants``.
"""
