"""A Gemma-shaped tiny checkpoint (conftest ``gemma_checkpoint``: head_dim apart from hidden/heads, one KV head,
sliding-window layers, tied head, BOS-adding tokenizer) through every runtime family that claims it: each
variant either runs (scored on the fp32 baseline's tokens) or refuses in one line that says what to do."""
import pytest

from edgekit.core.errors import EdgekitError
from edgekit.measure.quality import EvalSettings, score
from edgekit.runtimes import build_runner

SETTINGS = EvalSettings(context=64, stride=32, max_tokens=256, batch_size=4)
CALIBRATION = "samples=4,seq_len=64"
RUNS = ["int8", "nf4", "int4-g32", "int4-g128", f"gptq-int4-g128:{CALIBRATION}", "kq4",
        f"mixed-int4-g128-k4:rank_tokens=256,{CALIBRATION}", f"prune-wanda-50%:{CALIBRATION}",
        f"prune-wanda-50%+int4-g128:{CALIBRATION}", "gguf-q8_0", "onnx-int8", "onnx-int4-g32", "ov-int4-g128"]
REFUSALS = {"prune-heads-50%": "single key/value head"}


@pytest.fixture(scope="module")
def gemma(gemma_checkpoint):
    from edgekit.core.paths import eval_token_ids
    from edgekit.models.load import load_tokenizer

    tokenizer = load_tokenizer(gemma_checkpoint)
    ids = eval_token_ids(tokenizer, "eval")[: SETTINGS.max_tokens]
    runner = build_runner("fp32", gemma_checkpoint, tokenizer)
    base = score(runner, ids, SETTINGS, keep_logprobs=True, progress=False)
    runner.close()
    return gemma_checkpoint, tokenizer, ids, base


@pytest.mark.parametrize("variant", RUNS)
def test_a_gemma_shape_runs_through(gemma, variant):
    folder, tokenizer, ids, base = gemma
    runner = build_runner(variant, folder, tokenizer)
    try:
        against = score(runner, ids, SETTINGS, baseline=base, progress=False).against(base)
        assert runner.weight_bytes() > 0
    finally:
        runner.close()
    # a random model's next-token distributions are nearly flat: its top-1 is fragile, its KL is not
    assert 0 <= against["kl_divergence"] < 0.1, against


@pytest.mark.parametrize("variant", REFUSALS)
def test_a_gemma_shape_is_refused_in_one_line(gemma, variant):
    folder, tokenizer, _, _ = gemma
    with pytest.raises(EdgekitError, match=REFUSALS[variant]) as refused:
        build_runner(variant, folder, tokenizer).close()
    assert "\n" not in str(refused.value)


def test_the_cli_refuses_a_graph_it_cannot_build_with_exit_2(gemma_checkpoint, tmp_path, capsys):
    """A Gemma 3 that attends both ways (an embedding-model option) is no causal decoder: the graph is refused."""
    import json
    import shutil

    from edgekit.cli import main

    folder = tmp_path / "bidirectional"
    shutil.copytree(gemma_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "use_bidirectional_attention": True}))
    assert main(["export", "--model", str(folder), "--variant", "ov-int4-g128", "--out", str(tmp_path / "ov")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgekit: error: ov-int4-g<N>: ") and "bidirectional attention" in err
    assert err.endswith("use ov-int8 for it") and "\n" not in err
