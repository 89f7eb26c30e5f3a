"""edgekit.workflows.side_by_side: the default model continued by fp32 and by a variant, cut at the first differing
token."""
import pytest

from edgekit.core.errors import InputError, VariantError
from edgekit.models.load import load_tokenizer
from edgekit.models.runner import generate_text
from edgekit.runtimes import build_runner
from edgekit.workflows.side_by_side import first_difference, side_by_side

PROMPT = "HAMLET:\nTo be, or not to be,"


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([7], [8]) == 0
    assert first_difference([1, 2], [1, 2, 3]) == 2  # the shorter one differs where it ends


@pytest.fixture(scope="module")
def parted():
    return side_by_side("default", "int2-g64", PROMPT, max_new_tokens=24)


def test_the_baseline_column_is_what_generate_text_gives(parted):
    runner = build_runner("fp32", "default", load_tokenizer("default"))
    try:
        assert parted.baseline.text == generate_text(runner, PROMPT, 24)
    finally:
        runner.close()
    assert parted.baseline.variant == "fp32" and parted.variant.variant == "int2-g64"
    assert len(parted.baseline.tokens) == len(parted.variant.tokens) == 24


def test_the_continuations_are_cut_at_their_first_differing_token(parted):
    at = parted.first_difference
    assert at is not None, "2-bit weights on a 6.8M model should part from fp32 within 24 tokens"
    base, other = parted.baseline, parted.variant
    assert base.tokens[:at] == other.tokens[:at] and base.tokens[at] != other.tokens[at]
    assert parted.same_tokens == at
    for c in (base, other):
        assert c.common + c.first + c.rest == c.text and c.first  # the marked token is not empty
    assert base.common == other.common  # the shared tokens decode to the same text


def test_a_variant_against_itself_never_parts():
    same = side_by_side("default", "fp32", PROMPT, max_new_tokens=8)
    assert same.first_difference is None and same.same_tokens == 8
    assert same.baseline.tokens == same.variant.tokens and same.variant.first == "" == same.variant.rest
    assert same.variant.common == same.variant.text


def test_bad_input_is_refused_before_any_load():
    with pytest.raises(VariantError):
        side_by_side("default", "int5-g7", PROMPT)
    with pytest.raises(InputError, match="prompt is empty"):
        side_by_side("default", "fp32", "", max_new_tokens=2)
