"""Layer sensitivity: a layer left at baseline costs exactly nothing; a quantized one costs something."""
import math

import pytest

from edgekit.measure.quality import EvalSettings
from edgekit.measure.store import ResultStore
from edgekit.quantizers.sensitivity import heatmap_table, layer_sensitivity, ranked, ranking

FAST = EvalSettings(context=128, stride=128, max_tokens=512, batch_size=4)


def test_layer_left_at_baseline_has_zero_sensitivity(default_model, tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    frame = layer_sensitivity(default_model, "fp32", "module", settings=FAST, store=store, progress=False)
    assert len(frame) == 7  # q, k, v, o, gate, up, down across all blocks
    assert (frame["kl_divergence"] == 0).all()
    assert (frame["top1_agreement"] == 1).all()
    stored = store.results(kind="sensitivity")
    assert len(stored) == 7 and stored[0].variant.startswith("fp32@")


def test_quantized_layers_rank_by_kl(default_model):
    frame = layer_sensitivity(default_model, "int2-g64", "layer", progress=False,
                              settings=EvalSettings(context=128, stride=128, max_tokens=256, batch_size=4))
    assert len(frame) == 6 * 7
    assert (frame["kl_divergence"] > 0).all() and frame["kl_divergence_se"].map(math.isfinite).all()
    order = ranked(frame)
    assert order["kl_divergence"].is_monotonic_decreasing
    table = heatmap_table(frame)
    assert table.shape == (6, 7)


def test_ranking_is_cached(default_model, monkeypatch):
    first = ranking(default_model, "int2-g64", tokens=512, progress=False)  # the mixed variants' tests share it
    assert len(first) == 42 and len(set(first)) == 42

    def fail(*args, **kwargs):
        raise AssertionError("ranking was recomputed instead of read from the cache")

    monkeypatch.setattr("edgekit.quantizers.sensitivity.layer_sensitivity", fail)
    assert ranking(default_model, "int2-g64", tokens=512, progress=False) == first


def test_unsupported_scheme_is_refused(default_model):
    from edgekit.core.errors import VariantError

    with pytest.raises(VariantError, match="sensitivity supports"):
        layer_sensitivity(default_model, "nf4", settings=FAST, progress=False)
