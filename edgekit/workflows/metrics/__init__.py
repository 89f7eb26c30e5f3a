"""``evaluate`` metric modules shipped inside edgekit (load them by path, offline)."""
from pathlib import Path


def perplexity_metric_path() -> str:
    """The folder of edgekit's perplexity metric, for ``evaluate.load(perplexity_metric_path())``."""
    return str(Path(__file__).resolve().parent / "perplexity")
