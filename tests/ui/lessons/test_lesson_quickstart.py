"""Notebook 00's closing follows its figures: the embedding share's direction and the slice scored."""
from edgekit.ui.lessons.quickstart import closing

RUN = {"cpu": "AMD EPYC", "cores": 2, "torch": "2.13.0", "model": "default", "params": 6_819_072,
       "weight_bytes": 27_276_288, "dtype": "float32", "share": 0.154, "share_7b": 0.039, "prompt": "To be",
       "first_line": "To be, or not to be a man.", "ppl": 54.44, "ppl_ci95": [51.2, 57.9], "tokens": 16_256,
       "windows": 127, "context": 256, "stride": 128, "max_tokens": 16_384}


def test_a_tiny_model_weighs_its_embeddings_more():
    text = closing(RUN)
    assert "weighs 3.95x as much here as in a 7B" in text
    assert "27.28 MB" in text and "[51.2, 57.9]" in text


def test_the_opposite_share_reads_the_other_way():
    text = closing(RUN | {"share": 0.01})
    assert "weighs 3.90x less here than in a 7B" in text and "as much here" not in text


def test_a_slice_is_not_the_model_cards_figure():
    assert "its figure differs from this slice's" in closing(RUN)
    whole = closing(RUN | {"max_tokens": None})
    assert "reports the same figure" in whole and "the whole eval split" in whole
    assert "differs" not in whole
