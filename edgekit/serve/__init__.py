"""Floor 6: the OpenAI-compatible server: app, engine, batching and its load test. Never imports ``ui``.
"""
