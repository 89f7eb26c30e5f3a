"""Notebook 01's closing follows its figures: scope trend, code book order, runnable bytes."""
from edgekit.ui.lessons.quantize_weights import closing

MEANS = {"sym-int8-tensor": 0.01, "sym-int8-channel": 0.006, "sym-int4-tensor": 0.2, "sym-int4-channel": 0.12,
         "sym-int4-b128": 0.1, "sym-int4-b32": 0.08, "asym-int4-b32": 0.07, "nf4-b64": 0.075}
BITS = {"sym-int4-b32": 4.5, "asym-int4-b32": 4.75, "nf4-b64": 4.5}
RUN = {"means": MEANS, "bits": BITS, "hardest": "model.layers.0.mlp.down_proj", "hardest_error": 0.09,
       "tensor_kind": "v_proj", "knob": "sym-int4-b32",
       "runnable_bytes": {"int4-g32": 11_351_040, "int4-g128": 10_908_672, "nf4": 11_056_128,
                          "nf4:double_quant=true": 10_879_104}}


def test_a_realistic_run():
    text = closing(RUN)
    assert "each finer scope lowered it" in text
    assert "lands below `sym-int4-b32`" in text and "lowered the error" in text
    assert "fewer bytes than `int4-g32`" in text and "more than `int4-g128`" in text
    assert "holds fewer (10.88 MB)" in text


def test_opposite_data_changes_each_sentence():
    flipped = {**MEANS, "sym-int4-b128": 0.13, "nf4-b64": 0.09, "asym-int4-b32": 0.085}
    bytes_ = {"int4-g32": 11_000_000, "int4-g128": 11_100_000, "nf4": 11_056_128, "nf4:double_quant=true": 11_100_000}
    text = closing(RUN | {"means": flipped, "runnable_bytes": bytes_})
    assert "did not fall with every finer scope (not monotone)" in text and "lowered it" not in text
    assert "lands above `sym-int4-b32`" in text and "did not lower the error" in text
    assert "more bytes than `int4-g32`" in text and "fewer than `int4-g128`" in text
    assert "holds more (11.10 MB)" in text
