"""Issue 16 on a CPU: the ``compile=true`` option (static KV cache, compiled decode step) and the
loads an accelerator gets (quantize-on-load, bitsandbytes' unquantized parts in the checkpoint dtype)."""
import pytest
import torch

from edgekit.memory.bytes import weight_bytes
from edgekit.memory.peak import streamed_load
from edgekit.memory.plan import plan_memory
from edgekit.models.runner import generate_text
from edgekit.runtimes import build_runner
from edgekit.variants.registry import Variant

PROMPT = "ROMEO:\nWhat light through yonder window"


def test_compiled_decoding_gives_the_eager_tokens(default_model, tokenizer):
    eager = build_runner("fp32", default_model, tokenizer)
    compiled = build_runner("fp32:compile=true", default_model, tokenizer)
    want = generate_text(eager, PROMPT, 16)
    assert len(set(want.split())) > 3  # a continuation worth comparing, not one repeated token
    assert generate_text(compiled, PROMPT, 16) == want
    assert generate_text(compiled, PROMPT + " breaks", 12) == generate_text(eager, PROMPT + " breaks", 12)
    assert compiled._static_cache is not None  # it decoded on the static cache


@pytest.mark.parametrize("variant", ["nf4", "int8", "int4-g128"])
def test_an_accelerator_quantizes_while_loading(variant, default_model):
    """On a GPU the scarce memory is the GPU's: the planner prices (and the guard loads) quantized
    variants tensor by tensor there, where a CPU keeps the full load for a small checkpoint."""
    config = default_model
    from edgekit.models.load import model_config

    cfg = model_config(config)
    assert streamed_load(cfg, Variant.parse(variant), "cuda")
    assert not streamed_load(cfg, Variant.parse(variant), "cpu")
    gpu = plan_memory(config, variant, context=256, device="rtx-4090-24gb")
    assert "tensor by tensor" in gpu.peak_reason and gpu.peak_bytes <= gpu.total_bytes * 1.15


def test_bitsandbytes_holds_the_rest_in_the_checkpoint_dtype(biased_checkpoint):
    """int8's embeddings, norms and head stay bf16 whichever way it loads, as planned (they were fp32
    on the full load, 7.4% over the plan for a 7B on CUDA)."""
    for low_memory in ("false", "true"):
        runner = build_runner(f"int8:low_memory={low_memory}", biased_checkpoint)
        assert runner.weight_bytes() == weight_bytes(biased_checkpoint, "int8")
        assert runner.model.get_input_embeddings().weight.dtype == torch.bfloat16


def test_quantize_on_load_of_a_hub_id_fetches_it_or_says_what_to_do():
    """A hub id streams from its snapshot (as from_pretrained would fetch it); offline and uncached, one clear line."""
    from transformers import BitsAndBytesConfig

    from edgekit.core.errors import ModelSourceError
    from edgekit.quantizers.bitsandbytes import load_bnb_quantized

    with pytest.raises(ModelSourceError, match="download it and pass its local folder"):
        load_bnb_quantized("edgekit-tests/no-such-model", BitsAndBytesConfig(load_in_4bit=True))


def test_packed_rest_in_bf16_as_on_a_gpu(default_model, tokenizer, eval_ids):
    """compute_dtype=bf16 (the default on CUDA, as gpt-fast holds its models): embeddings, norms and head in
    bf16, codes and scales untouched, priced as held, the same model whether packed while loading or after."""
    ids = eval_ids[:128].reshape(2, 64)
    fp32_rest = build_runner("int4-g32", default_model, tokenizer)
    variant = "int4-g32:compute_dtype=bf16"
    loaded = build_runner(f"{variant},low_memory=false", default_model, tokenizer)
    streamed = build_runner(f"{variant},low_memory=true", default_model, tokenizer)
    assert loaded.model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert loaded.weight_bytes() == streamed.weight_bytes() == weight_bytes(default_model, variant)
    torch.testing.assert_close(loaded.logits(ids), streamed.logits(ids), rtol=0, atol=0)
    reference, got = fp32_rest.logits(ids), loaded.logits(ids)
    assert (reference.argmax(-1) == got.argmax(-1)).float().mean() > 0.95
