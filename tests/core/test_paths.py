"""The corpus splits: present, non-empty, disjoint whole works."""
import pytest

from edgekit.core.errors import EdgekitError
from edgekit.core.paths import SPLITS, corpus_path, data_dir, read_split


def long_lines(split: str) -> set[str]:
    return {line.strip() for line in read_split(split).splitlines() if len(line.strip()) >= 40}


@pytest.mark.parametrize("split", SPLITS)
def test_split_exists_and_has_text(split):
    assert len(read_split(split)) > 50_000


@pytest.mark.parametrize("held_out", ["eval", "calibration", "eval_milton"])
def test_held_out_splits_share_no_line_with_train(held_out):
    assert long_lines(held_out), held_out
    assert not long_lines(held_out) & long_lines("train")


def test_works_listing_names_each_work_once():
    rows = [line.split("\t") for line in (data_dir() / "corpus" / "WORKS.txt").read_text().splitlines()]
    works = [work for _, work in rows]
    assert len(works) == len(set(works))
    assert {split for split, _ in rows} == {f"{s}.txt" for s in SPLITS}
    assert ("eval.txt", "hamlet_gut.txt") in [tuple(r) for r in rows]


def test_unknown_split_says_which_exist():
    with pytest.raises(EdgekitError, match="eval_milton"):
        corpus_path("test")


def test_the_bos_rule_is_read_from_the_tokenizers_own_encoding(tokenizer, gemma_checkpoint):
    """The default model's tokenizer adds nothing to a text (no BOS: its figures stay as they were); one whose
    post-processor puts BOS first, as Gemma's does, gets that id."""
    from edgekit.core.paths import bos_token_id
    from edgekit.models.load import load_tokenizer

    assert bos_token_id(tokenizer) is None
    gemma = load_tokenizer(gemma_checkpoint)
    assert gemma("a")["input_ids"][0] == gemma.bos_token_id != gemma("a", add_special_tokens=False)["input_ids"][0]
    assert bos_token_id(gemma) == gemma.bos_token_id
    assert bos_token_id(None) is None


def test_calibration_and_training_windows_follow_the_bos_rule(tokenizer, gemma_checkpoint):
    """Windows a model is calibrated or tuned on begin as its scored windows do: BOS first for a tokenizer that
    adds it (then the window's first length - 1 tokens), unchanged for one that adds none. Checked on the
    calibrating methods' windows, SmoothQuant's, and the batches the distillation loop feeds its teacher."""
    import torch

    from edgekit.core.paths import calibration_ids
    from edgekit.models.load import load_model, load_tokenizer
    from edgekit.quantizers.distill import DistillSettings, kl_distill
    from edgekit.quantizers.smoothquant import calibration_windows

    gemma = load_tokenizer(gemma_checkpoint)
    plain, with_bos = calibration_ids(tokenizer, 4, 32), calibration_ids(gemma, 4, 32)
    assert plain.shape == with_bos.shape == (4, 32) and (plain[:, 0] != gemma.bos_token_id).any()
    assert (with_bos[:, 0] == gemma.bos_token_id).all()
    assert torch.equal(with_bos[:, 1:], plain[:, :-1])  # the same seeded windows (one vocabulary), shifted by BOS
    assert (calibration_windows(gemma, 2, 16)[:, 0] == gemma.bos_token_id).all()
    assert not (calibration_windows(tokenizer, 2, 16)[:, 0] == gemma.bos_token_id).all()

    teacher, student = load_model(gemma_checkpoint), load_model(gemma_checkpoint)
    fed = []
    teacher.register_forward_pre_hook(lambda module, args, kwargs: fed.append(kwargs["input_ids"]), with_kwargs=True)
    settings = DistillSettings(steps=1, batch_size=2, seq_len=24, eval_every=0, eval_tokens=64, train_chars=20_000)
    kl_distill(teacher, student, [p for n, p in student.named_parameters() if "layers.0." in n], gemma, settings,
               progress=False)
    trained = [ids for ids in fed if ids.shape == (2, 24)]
    assert trained and all((ids[:, 0] == gemma.bos_token_id).all() for ids in trained)
