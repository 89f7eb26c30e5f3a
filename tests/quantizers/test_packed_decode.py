"""Issue 28 item 7: the fused decoder behind ``compile=true`` for packed int4 llama-family models, and the
``embed=8`` table, checked against transformers' own forward on the same packed weights."""
import pytest
import torch

from edgekit.core.errors import VariantError
from edgekit.memory.bytes import weight_bytes
from edgekit.quantizers.int4_kernel import CPU_KERNEL, cpu_block_rows
from edgekit.quantizers.packed_decode import FusedDecoder, fusion_refusal
from edgekit.runtimes import build_runner

pytestmark = pytest.mark.skipif(cpu_block_rows() is None, reason="the CPU int4 kernel's layout is not known here")


def test_fused_decoder_gives_transformers_logits_and_leaves_the_model_as_it_was(default_model, tokenizer,
                                                                                 eval_ids):
    runner = build_runner("int4-g32", default_model, tokenizer)
    ids = eval_ids[:96].view(1, -1)
    before = runner.logits(ids)
    decoder = FusedDecoder(runner.model)  # the model's q/k/v and gate/up now read views of the fused codes
    torch.testing.assert_close(runner.logits(ids), before, rtol=0, atol=0)
    decoder.reset(128)
    torch.testing.assert_close(decoder.logits(ids[0]), before[:, -1], rtol=1e-4, atol=1e-4)
    assert runner.model.model.layers[0].self_attn.k_proj.qweight.data_ptr() != \
        runner.model.model.layers[0].self_attn.q_proj.qweight.data_ptr()  # rows of one tensor, not one view


def test_compiled_fused_decoding_gives_the_eager_tokens(default_model, tokenizer, eval_ids):
    eager = build_runner("int4-g32", default_model, tokenizer)
    fused = build_runner("int4-g32:compile=true", default_model, tokenizer)
    assert fused.decode_path == "fused int4 decoder, compiled step"
    prompt = eval_ids[:40].view(1, -1)
    want = list(eager.generate_stream(prompt, 24))
    assert len(set(want)) > 3  # a continuation worth comparing
    assert list(fused.generate_stream(prompt, 24)) == want
    longer = eval_ids[:150].view(1, -1)  # outgrows the first cache: re-made and re-compiled
    assert list(fused.generate_stream(longer, 8)) == list(eager.generate_stream(longer, 8))
    assert fused._fused.capacity == 256
    assert fused.weight_bytes() == eager.weight_bytes() + fused._fused.extra_bytes > eager.weight_bytes()


def test_compiled_fused_decoding_reads_the_int8_table(default_model, tokenizer, eval_ids):
    """embed=8 under the compiled step: the lookup reads rows out of the planes' layout inside the graph."""
    prompt = eval_ids[:40].view(1, -1)
    eager = build_runner("int4-g32:embed=8", default_model, tokenizer)
    fused = build_runner("int4-g32:embed=8,compile=true", default_model, tokenizer)
    assert len(list(fused.generate_stream(prompt, 6))) == 6
    want = eager.logits(prompt)[0, -1]
    # the head's bf16 activations: a last-bit difference in the hidden state moves a logit by a bf16 step
    torch.testing.assert_close(fused._fused.logits(prompt[0])[0], want, rtol=0, atol=0.1)
    step = fused._fused.step(int(prompt[0, -1]), prompt.shape[1] - 1)  # the compiled step redoes the last position
    top2 = want.topk(2).values
    assert step.item() == want.argmax().item() or top2[0] - top2[1] < 0.2


def test_models_the_fused_decoder_does_not_run_decode_as_before(default_model, tokenizer, biased_checkpoint,
                                                                gemma_checkpoint):
    block = cpu_block_rows()
    gemma = build_runner("int4-g32:compile=true", gemma_checkpoint)
    assert "gemma3_text decoder" in gemma.decode_path and gemma._fused is None
    qwen = build_runner("int4-g32", biased_checkpoint)
    assert "bias-free" in fusion_refusal(qwen.model, CPU_KERNEL, block)
    dequantized = build_runner("int4-g48", default_model, tokenizer)  # no kernel takes groups of 48
    assert "not a bias-free layer on" in fusion_refusal(dequantized.model, CPU_KERNEL, block)
    assert fusion_refusal(build_runner("int4-g32", default_model, tokenizer).model, CPU_KERNEL, block) is None
    two_sizes = build_runner("int4-g64", default_model, tokenizer).model  # one layer's groups of 32 among 64s
    two_sizes.model.layers[1].mlp.down_proj = build_runner("int4-g32", default_model, tokenizer).model \
        .model.layers[1].mlp.down_proj
    assert "mlp.down_proj has groups of 32" in fusion_refusal(two_sizes, CPU_KERNEL, block)


def test_calibrated_packed_variants_decode_on_the_fused_decoder(default_model, tokenizer, eval_ids):
    """GPTQ writes the same packed layers as RTN: ``compile=true`` takes the fused step, with eager's tokens."""
    prompt = eval_ids[:40].view(1, -1)
    fused = build_runner("gptq-int4-g64:compile=true", default_model, tokenizer)
    assert fused.decode_path == "fused int4 decoder, compiled step"
    want = list(build_runner("gptq-int4-g64", default_model, tokenizer).generate_stream(prompt, 16))
    assert len(set(want)) > 3 and list(fused.generate_stream(prompt, 16)) == want


def test_int8_table_is_priced_as_held_and_close_to_the_dense_head(default_model, tokenizer, eval_ids,
                                                                   gemma_checkpoint):
    ids = eval_ids[:128].view(2, 64)
    dense = build_runner("int4-g32", default_model, tokenizer)
    table = build_runner("int4-g32:embed=8", default_model, tokenizer)
    assert table.weight_bytes() == weight_bytes(default_model, "int4-g32:embed=8") < dense.weight_bytes()
    assert "int8 table as two int4 planes" in table.compute_path
    agree = (dense.logits(ids).argmax(-1) == table.logits(ids).argmax(-1)).float().mean()
    assert agree > 0.9
    tied = build_runner("int4-g32:embed=8", gemma_checkpoint)  # one table for the embedding and the head
    assert tied.model.get_input_embeddings().table is tied.model.get_output_embeddings().table
    assert tied.weight_bytes() == weight_bytes(gemma_checkpoint, "int4-g32:embed=8")
    with pytest.raises(VariantError, match="embed=8"):
        build_runner("int4-g32:embed=4", default_model, tokenizer)


def test_int8_table_planes_hold_the_int8_codes_exactly():
    """The two 4-bit planes are the int8 codes: the lookup gives codes x scale exactly, the head their product."""
    from edgekit.quantizers.int8_table import Int8Table, int8_rows

    torch.manual_seed(0)
    weight = torch.randn(256, 96) * torch.linspace(0.1, 3, 96)
    table = Int8Table(weight)
    assert table.group == 32 and not hasattr(table, "codes")
    codes, scale = int8_rows(weight)
    reference = codes.float() * scale.float()[:, None]
    ids = torch.tensor([[0, 31, 32, 63], [64, 200, 255, 7]])
    torch.testing.assert_close(table.lookup(ids, torch.float32), reference[ids], rtol=0, atol=0)
    x = torch.randn(3, 96).to(torch.bfloat16)
    exact = x.float() @ reference.T
    planes = (table.matmul(x) - exact).abs()
    # as close as the int8 kernel gets on the same codes (both round bf16 products)
    int8_kernel = (torch.ops.aten._weight_int8pack_mm(x, codes, scale).float() - exact).abs()
    assert planes.mean() <= 1.5 * int8_kernel.mean() and planes.max() <= 1.5 * int8_kernel.max()
