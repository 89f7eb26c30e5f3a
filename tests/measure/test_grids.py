"""edgekit.measure.grids: a checkpoint dequantized from a quantized file is found on that file's grid; a continuous
one is not."""
import json

import pytest
import torch

from edgekit.cli import main
from edgekit.measure.grids import GRID_BY_NAME, ON_GRID, block_linear_grid, error_ratio, grid_of, inspect_model
from edgekit.models.names import MODELS

SMOL = MODELS["smollm2-135m"]


def q4_1_weight(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """Built as a Q4_1 file holds it: per 32 columns fp16 d and m, codes 0..15 (both ends used), w = d q + m."""
    blocks = rows * cols // 32
    q = torch.randint(0, 16, (blocks, 32), generator=generator)
    q[:, 0], q[:, 1] = 0, 15
    q = q[:, torch.randperm(32, generator=generator)]
    d = (torch.rand(blocks, 1, generator=generator) * 0.01 + 0.001).half().float()
    m = (-8 * d + torch.randn(blocks, 1, generator=generator) * 0.002).half().float()
    return (q * d + m).reshape(rows, cols)


def q8_0_weight(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    blocks = rows * cols // 32
    q = torch.randint(-127, 128, (blocks, 32), generator=generator)
    q[:, 3] = 127
    d = (torch.rand(blocks, 1, generator=generator) * 0.001 + 1e-4).half().float()
    return (q * d).reshape(rows, cols)


def k_quant_weight(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """As Q4_K holds it: per sub-block of 32 a scale and a min that need not put the codes' ends on the block's."""
    blocks = rows * cols // 32
    q = torch.randint(1, 15, (blocks, 32), generator=generator)
    d = torch.rand(blocks, 1, generator=generator) * 0.01 + 0.001
    m = torch.rand(blocks, 1, generator=generator) * 0.05
    return (q * d - m).reshape(rows, cols)


def test_a_continuous_weight_is_on_no_grid():
    weight = torch.randn(256, 512, generator=torch.Generator().manual_seed(0)) * 0.02
    found, ratios = grid_of(weight)
    assert found is None
    assert all(r > 0.5 for r in ratios.values()), ratios  # rounding continuous weights costs about step^2/12


@pytest.mark.parametrize("build, expected", [(q4_1_weight, "Q4_1"), (q8_0_weight, "Q8_0"), (k_quant_weight, "Q4_K")])
def test_a_weight_rounded_onto_a_grid_is_found_on_it(build, expected):
    weight = build(128, 512, torch.Generator().manual_seed(1))
    found, ratios = grid_of(weight)
    assert found == expected, ratios
    assert ratios[expected] < ON_GRID
    # and the other grids of its block size read it as continuous: Q4_1 data is not on the symmetric Q4_0 grid
    if expected == "Q4_1":
        assert ratios["Q4_0"] > 0.5 and ratios["Q8_0"] > 0.5 and ratios["g128-asym4"] > 0.5


def test_a_ragged_grid_is_measured_on_whole_blocks_only():
    weight = q4_1_weight(16, 576, torch.Generator().manual_seed(2))
    assert error_ratio(weight, GRID_BY_NAME["Q4_1"]) < ON_GRID  # 576 = 18 blocks of 32
    assert error_ratio(weight, GRID_BY_NAME["g128-asym4"]) is not None  # 4 whole groups of 128, 64 columns left out
    assert error_ratio(weight[:, :16], GRID_BY_NAME["Q4_1"]) is None


def tiny_checkpoint(folder, generator, vocab: int = 256):
    """A tiny Llama saved as safetensors: block linears on Q4_1, the (untied) embedding on Q8_0, a continuous head."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in name:
                module.weight.copy_(q4_1_weight(*module.weight.shape, generator))
        model.model.embed_tokens.weight.copy_(q8_0_weight(vocab, 64, generator))
    model.save_pretrained(folder)
    return folder


def test_inspect_reports_each_group_and_the_cli_prints_it(tmp_path, capsys):
    folder = tiny_checkpoint(tmp_path / "ckpt", torch.Generator().manual_seed(3))
    groups = {g.group: g for g in inspect_model(str(folder))}
    assert set(groups) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                           "embeddings", "head"}
    assert all(groups[k].grid == "Q4_1" and groups[k].tensors == 2 for k in ("q_proj", "down_proj"))
    assert groups["embeddings"].grid == "Q8_0" and groups["head"].grid == "none"
    assert block_linear_grid(list(groups.values())) == "Q4_1"
    assert main(["inspect", str(folder), "--json", str(tmp_path / "grids.json")]) == 0
    printed = capsys.readouterr().out
    assert "embeddings" in printed and "Q8_0" in printed
    assert {g["group"]: g["grid"] for g in json.loads((tmp_path / "grids.json").read_text())}["o_proj"] == "Q4_1"


def test_the_default_model_lies_on_no_grid():
    groups = inspect_model("default")
    assert groups and all(g.grid == "none" for g in groups)
    assert block_linear_grid(groups) is None


@pytest.mark.skipif(not SMOL.installed(), reason="smollm2-135m is installed by `make setup`")
def test_smollm2_is_found_on_its_gguf_grids():
    """Published as Q4_1 (block linears) and Q8_0 (the tied embedding); its first, middle and last block
    stand for all 30 (`edgekit inspect smollm2-135m` reads them all)."""
    from edgekit.measure.grids import checkpoint_weights, inspect_weights
    from edgekit.models.load import resolve_source

    some = [(n, t) for n, t in checkpoint_weights(resolve_source("smollm2-135m"))
            if ".layers." not in n or any(f".layers.{i}." in n for i in (0, 15, 29))]
    groups = {g.group: g for g in inspect_weights(some)}
    assert groups["q_proj"].tensors == 3
    assert all(g.grid == "Q4_1" for name, g in groups.items() if name != "embeddings")
    assert groups["embeddings"].grid == "Q8_0"
    assert groups["q_proj"].mean_ratio("Q4_1") < ON_GRID < groups["q_proj"].mean_ratio("Q4_0")
