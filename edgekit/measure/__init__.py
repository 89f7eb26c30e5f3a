"""Floor 3: what a run measures, seeing only the Runner: quality (perplexity, KL, top-1), statistics,
latency, peak memory and the results store. Knows no variant names. Imports ``core``, ``models``, ``variants``.
"""
