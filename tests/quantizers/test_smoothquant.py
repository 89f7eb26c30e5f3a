"""edgekit.quantizers.smoothquant: per-channel activation maxima, and SmoothQuant as an exact rewrite of the fp32
model."""
import numpy as np
import pytest
import torch

from edgekit.core.errors import VariantError
from edgekit.models.load import load_model
from edgekit.quantizers.smoothquant import activation_maxima, calibration_windows, outlier_summary, smooth_quant
from edgekit.variants.registry import Variant


def test_maxima_shapes_summary_and_smoothing_keeps_the_function(default_model, tokenizer, eval_ids):
    model = load_model(default_model).eval()
    batches = calibration_windows(tokenizer, windows=2, length=64)
    maxima = activation_maxima(model, batches)
    layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    assert maxima["attention"].shape == maxima["mlp"].shape == (layers, hidden)
    assert maxima["down_proj"].shape == (layers, model.config.intermediate_size) and (maxima["attention"] > 0).all()
    table = outlier_summary(maxima)
    assert len(table) == 3 * layers and (table["max_over_median"] >= 1).all()

    ids = eval_ids[None, :96]
    with torch.no_grad():
        before = model(ids).logits
        smooth_quant(model, batches, alpha=0.5)
        after = model(ids).logits
        smoothed = activation_maxima(model, batches)
    assert torch.allclose(before, after, atol=1e-3 * before.abs().max().item())
    # what SmoothQuant is for: the spread between the largest and the median input channel shrinks
    spread = lambda m: np.median(m["attention"].max(1) / np.median(m["attention"], 1))  # noqa: E731
    assert spread(smoothed) < spread(maxima)


def test_bad_alpha_and_the_variant_names(default_model, tokenizer):
    with pytest.raises(VariantError, match="alpha"):
        smooth_quant(load_model(default_model), calibration_windows(tokenizer, 1, 16), alpha=1.5)
    assert Variant.parse("sq-onnx-int8-static:alpha=0.7").field("inner") == "onnx-int8-static"
