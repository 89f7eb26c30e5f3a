"""Perplexity as a Hugging Face ``evaluate`` metric, with edgekit's definition.

``evaluate.load("<edgekit>/metrics/perplexity")`` (or the path of this file) loads it
offline; :func:`edgekit.workflows.metrics.perplexity_metric_path` gives that path. It takes the same
inputs as the hub's ``perplexity`` metric (``predictions``: a list of texts, ``model_id``)
and returns the same keys (``perplexities`` per text, ``mean_perplexity``), plus the
token-weighted ``perplexity`` over all texts. Each text is scored by
:func:`edgekit.measure.quality.score`: the sliding-window definition of the Hugging Face guide
"Perplexity of fixed-length models", so a text longer than ``context`` is scored in windows
advancing by ``stride`` instead of being truncated. For a text that fits one window, with
``add_start_token=False`` on the hub's side, the two metrics compute the same quantity.

Extra arguments: ``variant`` (any edgekit variant name, default ``fp32``), ``context``
and ``stride`` (tokens), ``batch_size``.
"""
import math

import datasets
import evaluate
import numpy as np

from edgekit.core.errors import InputError
from edgekit.measure.quality import EvalSettings, score
from edgekit.models.load import load_tokenizer
from edgekit.runtimes import build_runner

_CITATION = """\
@misc{hf_perplexity_guide,
  title = {Perplexity of fixed-length models},
  author = {Hugging Face},
  howpublished = {https://huggingface.co/docs/transformers/perplexity}
}
"""

_KWARGS = """
Args:
    predictions (list of str): the texts to score, each one on its own.
    model_id (str): "default" (edgekit's shipped model), a local model folder or a hub id.
    variant (str): edgekit variant to score, e.g. "fp32", "int8", "nf4", "int4-g32". Default "fp32".
    context (int): tokens per window. Default 256.
    stride (int): tokens a window advances. Default 128.
    batch_size (int): windows per forward pass. Default 8.
Returns:
    perplexities (list of float): one per text; mean_perplexity: their mean;
    perplexity: token-weighted over all texts; scored_tokens: tokens scored in all.
Examples:
    >>> metric = evaluate.load(edgekit.workflows.metrics.perplexity_metric_path())
    >>> metric.compute(predictions=["To be, or not to be"], model_id="default")["perplexities"]
"""


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS)
class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric", description=__doc__, citation=_CITATION, inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string")}),
            reference_urls=["https://huggingface.co/docs/transformers/perplexity"])

    def _compute(self, predictions, model_id="default", variant="fp32", context=256, stride=128, batch_size=8):

        settings = EvalSettings(context=context, stride=stride, max_tokens=None, batch_size=batch_size)
        tokenizer = load_tokenizer(model_id)
        runner = build_runner(variant, model_id, tokenizer)
        try:
            perplexities, nll, tokens = [], 0.0, 0
            for i, text in enumerate(predictions):
                ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
                if len(ids) < 2:
                    raise InputError(f"prediction {i} has {len(ids)} token(s); every text needs at least 2")
                scores = score(runner, ids, settings, progress=False)
                perplexities.append(scores.perplexity()["perplexity"])
                nll += float(scores.nll.sum())
                tokens += scores.scored_tokens
        finally:
            runner.close()
        return {"perplexities": perplexities, "mean_perplexity": float(np.mean(perplexities)),
                "perplexity": math.exp(nll / tokens), "scored_tokens": tokens}
