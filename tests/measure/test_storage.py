"""edgekit.measure.storage: bits per weight and storage types as runners hold them, and the flag for a scheme on the
baseline's grid."""
import torch
from test_grids import tiny_checkpoint

from edgekit.measure.storage import BLOCK_LINEARS, EMBEDDINGS, held_storage
from edgekit.models.load import load_tokenizer
from edgekit.runtimes import build_runner


def test_dense_and_packed_runners_report_what_they_hold(default_model, tokenizer):
    dense = held_storage(build_runner("fp32", default_model, tokenizer), default_model)
    assert dense["bits_per_weight"] == dense["bits_per_weight_embeddings"] == 32
    assert dense["storage_types"] == {BLOCK_LINEARS: {"float32": 1.0}, EMBEDDINGS: {"float32": 1.0}}
    assert dense["grid_aligned"] is False
    packed = held_storage(build_runner("int4-g32", default_model, tokenizer), default_model)
    assert packed["storage_types"][BLOCK_LINEARS] == {"int4-g32": 1.0}
    assert 4.5 < packed["bits_per_weight"] < 5.5  # 4-bit codes plus a scale and zero point per 32 weights
    assert packed["bits_per_weight_embeddings"] == 32  # PyTorch rows keep the embedding as it was


def test_a_scheme_that_reproduces_the_baselines_grid_is_flagged(tmp_path):
    """On a checkpoint whose block linears lie on Q4_1, kq4 (a real-valued min per 32) lands on that grid;
    int4-g32 (an integer zero point that keeps 0 in range) does not."""
    folder = str(tiny_checkpoint(tmp_path / "ckpt", torch.Generator().manual_seed(4)))
    tokenizer = load_tokenizer("default")
    kq = held_storage(build_runner("kq4:sensitive=4", folder, tokenizer), folder)
    assert kq["grid_aligned"] is True and set(kq["storage_types"][BLOCK_LINEARS]) == {"kq4-b32"}
    assert 8 < kq["bits_per_weight_embeddings"] <= 9  # 8-bit codes and their scales (one super-block a 64-wide row)
    rtn = held_storage(build_runner("int4-g32", folder, tokenizer), folder)
    assert rtn["grid_aligned"] is False


def test_an_onnx_graph_reports_its_matmulnbits_and_embedding(default_model, onnx_artifact):
    from edgekit.runtimes.onnxruntime.runner import ORTRunner

    runner = ORTRunner(onnx_artifact("onnx-int4-g32"))
    held = held_storage(runner, default_model)
    assert held["storage_types"][BLOCK_LINEARS] == {"MatMulNBits-int4-b32": 1.0}
    assert 4.5 <= held["bits_per_weight"] < 5.5
    assert held["bits_per_weight_embeddings"] is not None


def test_an_openvino_ir_reports_its_codes_scales_and_embedding(default_model):
    """ov-int4-g128 holds symmetric u4 codes with one fp32 scale per 128 weights in its block linears and head,
    and an int8 embedding with a scale per row: read from the IR's constants, not from the variant's name."""
    from edgekit.runtimes import cached_artifact, load_artifact

    runner = load_artifact(cached_artifact("ov-int4-g128", default_model))
    try:
        held = held_storage(runner, default_model)
    finally:
        runner.close()
    assert held["storage_types"][BLOCK_LINEARS] == {"u4-b128": 1.0}
    assert held["bits_per_weight"] == 4 + 32 / 128
    assert held["storage_types"][EMBEDDINGS] == {"i8-row": 0.5, "u4-b128": 0.5}  # the embedding and the head
    assert held["bits_per_weight_embeddings"] == ((8 + 32 / 256) + (4 + 32 / 128)) / 2
    assert held["grid_aligned"] is False


def test_a_row_on_the_baselines_grid_is_flagged_in_the_table_the_cli_and_the_report(tmp_path, capsys, default_model):
    """A real comparison of the Q4_1 checkpoint (with the default model's vocabulary and tokenizer): kq4's row, on
    the baseline's grid, is flagged in the CLI's table and its lines and in both reports; int4-g32's is not."""
    import html
    import shutil

    from edgekit.cli import main

    folder = tiny_checkpoint(tmp_path / "ckpt", torch.Generator().manual_seed(4), vocab=4096)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(f"{default_model}/{name}", folder / name)
    assert main(["compare", "--model", str(folder), "--variants", "fp32,kq4:sensitive=4,int4-g32", "--no-latency",
                 "--max-tokens", "256", "--context", "128", "--stride", "64", "--store", str(tmp_path / "r.sqlite"),
                 "--report", str(tmp_path / "report")]) == 0
    out, err = capsys.readouterr()
    note = "aligned with the baseline's grid: understates its error"
    quality = out.split("\nquality:\n")[1].split("\n\n")[0]  # the quality table, up to the next table
    rows = {line.split()[0]: line for line in quality.splitlines()[1:]}
    assert note in rows["kq4:sensitive=4"] and note not in rows["int4-g32"] and note not in rows["fp32"]
    assert f"kq4:sensitive=4: {note}" in err and f"int4-g32: {note}" not in err
    markdown = (tmp_path / "report" / "report.md").read_text()
    page = (tmp_path / "report" / "report.html").read_text()
    assert f"- kq4:sensitive=4: {note}" in markdown and f"int4-g32: {note}" not in markdown
    assert html.escape(f"kq4:sensitive=4: {note}") in page and html.escape(f"int4-g32: {note}") not in page
