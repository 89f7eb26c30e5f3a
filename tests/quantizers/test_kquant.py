"""edgekit.quantizers.kquant: searched block scale/min with 8-bit scales; bytes, round trip, ragged widths, tied
embeddings."""
import math

import pytest
import torch
from torch import nn

from edgekit.models.load import load_model
from edgekit.models.runner import module_weight_bytes
from edgekit.quantizers.kquant import KQuantLinear, KQuantWeight, kq_linear_bytes, quantize_kq, search_scale_min
from edgekit.quantizers.packed import dequantize, rtn_quantize
from edgekit.variants.registry import Variant


def _q41_grid(rows: int, cols: int) -> torch.Tensor:
    """Weights that are exactly Q4_1 blocks of 32 (what the smollm2-135m checkpoint holds)."""
    g = torch.Generator().manual_seed(0)
    d = torch.rand(rows, cols // 32, 1, generator=g) * 0.02 + 0.005
    m = -torch.rand(rows, cols // 32, 1, generator=g) * 0.1
    q = torch.randint(0, 16, (rows, cols // 32, 32), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15
    return (q * d + m).reshape(rows, cols)


def test_search_beats_min_max_on_gaussian_blocks():
    x = torch.randn(512, 32)
    d, m = search_scale_min(x, 4)
    searched = ((torch.clamp(torch.round((x - m[:, None]) / d[:, None]), 0, 15) * d[:, None] + m[:, None]) - x).pow(2)
    lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    step = (hi - lo) / 15
    minmax = (torch.round((x - lo) / step) * step + lo - x).pow(2)
    assert searched.mean() < 0.95 * minmax.mean()


@pytest.mark.parametrize("width", [576, 200])  # 576: super-blocks of 256 ragged; 200: a ragged block of 32 too
def test_bytes_round_trip_and_ragged_widths(width):
    w = torch.randn(48, width)
    q = KQuantWeight.from_weight(w, 4)
    assert module_weight_bytes(q) == kq_linear_bytes(Variant.parse("kq4:sensitive=4"), 48, width, False, "fp32")
    rel = (q.dequantize() - w).pow(2).mean() / w.pow(2).mean()
    codes, scale, zero = rtn_quantize(w, 4, 32)
    rtn = (dequantize(codes, scale, zero, 32) - w).pow(2).mean() / w.pow(2).mean()
    assert rel < rtn  # the searched, real-valued min beats RTN's integer zero point
    rows = q.dequantize(rows=torch.tensor([[5, 1, 2], [0, 5, 47]]))  # a batch of token ids, as an embedding gets
    assert (rows.shape == (6, width) and torch.equal(rows[1], q.dequantize()[1])
            and torch.equal(rows[5], q.dequantize()[47]))


def test_a_q4_1_grid_is_nearly_reproduced():
    w = _q41_grid(64, 576)
    err = (KQuantWeight.from_weight(w, 4).dequantize() - w).abs().max()
    codes, scale, zero = rtn_quantize(w, 4, 32)
    assert err < 0.1 * (dequantize(codes, scale, zero, 32) - w).abs().max()


def test_linear_logits_and_default_model(default_model, eval_ids):
    linear = nn.Linear(576, 64, bias=True)
    layer = KQuantLinear(KQuantWeight.from_weight(linear.weight, 6), linear.bias)
    x = torch.randn(3, 576)
    assert torch.allclose(layer(x), linear(x), atol=0.05 * linear(x).abs().max().item())

    ids = eval_ids[None, :128]
    reference = load_model(default_model).eval()
    model = quantize_kq(load_model(default_model).eval(), 4, sensitive=6, embed=6, progress=False)
    with torch.no_grad():
        ref, got = torch.log_softmax(reference(ids).logits, -1), torch.log_softmax(model(ids).logits, -1)
    kl = (ref.exp() * (ref - got)).sum(-1).mean().item()
    assert math.isfinite(kl) and kl < 0.05
    assert module_weight_bytes(model) < 0.25 * module_weight_bytes(reference)


def test_tied_embedding_stays_one_table():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        before = model(ids).logits
        quantize_kq(model, 4, embed=8, progress=False)
        after = model(ids).logits
    assert model.lm_head.weight_q is model.model.embed_tokens.weight_q
    assert torch.allclose(before, after, atol=0.1 * before.abs().max().item())
