"""Floor 6: what users run: compare, sweep (Ray), decide, tuning, side by side, canary, KV cache.
Never imports ``ui``.
"""
