"""Quantized KV caches: the planner's bytes against the format's arithmetic and against what llama.cpp allocates."""
import pytest

from edgekit.core.errors import PlanError, VariantError
from edgekit.memory.bytes import kv_cache_bytes
from edgekit.memory.plan import plan_memory
from edgekit.models.config import load_config
from edgekit.runtimes import build_runner
from edgekit.workflows.kv_cache import MIB, runtime_kv_bytes


def test_block_formats_are_priced_by_their_blocks():
    cfg = load_config("default")  # 6 layers, 2 KV heads of 64: 1,536 values per token for K and V together
    values = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 100
    assert kv_cache_bytes(cfg, 100, 1, "f16") == kv_cache_bytes(cfg, 100, 1, "fp16") == 2 * values
    assert kv_cache_bytes(cfg, 100, 1, "q8_0") == values // 32 * 34   # 32 int8 codes + an fp16 scale
    assert kv_cache_bytes(cfg, 100, 1, "q4_0") == values // 32 * 18   # 32 4-bit codes + an fp16 scale


def test_a_variant_kv_option_sets_the_planned_cache():
    quantized = plan_memory("default", "gguf-q4_0:kv=q8_0", context=1024)
    default = plan_memory("default", "gguf-q4_0", context=1024)
    assert quantized.kv_cache_bytes == kv_cache_bytes("default", 1024, 1, "q8_0")
    assert default.kv_cache_bytes == kv_cache_bytes("default", 1024, 1, "fp16")
    assert quantized.total_bytes - default.total_bytes == quantized.kv_cache_bytes - default.kv_cache_bytes


def test_cache_types_that_cannot_hold_the_heads_are_refused():
    odd_heads = {"model_type": "llama", "hidden_size": 96, "num_attention_heads": 2, "num_key_value_heads": 1,
                 "num_hidden_layers": 1, "intermediate_size": 64, "vocab_size": 128}  # heads of 48 values
    with pytest.raises(PlanError, match="blocks of 32"):
        kv_cache_bytes(odd_heads, 16, 1, "q8_0")
    with pytest.raises(PlanError, match="unknown KV cache type"):
        kv_cache_bytes("default", 16, 1, "q3_x")
    with pytest.raises((PlanError, VariantError), match="cache type"):  # the guard's plan refuses it first
        build_runner("gguf-q4_0:kv=q3", "default")


@pytest.mark.parametrize("cache", ["f16", "q8_0", "q4_0"])
def test_the_planner_prices_what_llama_cpp_allocates(cache):
    report = runtime_kv_bytes(f"gguf-q4_0:kv={cache},n_ctx=4096", "default")
    assert (report["cells"], report["k_type"], report["v_type"]) == (4096, cache, cache)
    # llama.cpp prints MiB with two decimals: K and V each within half a hundredth of a MiB
    assert abs(report["reported_bytes"] - report["planned_bytes"]) <= 0.01 * MIB
    assert report["planned_bytes"] == kv_cache_bytes("default", 4096, 1, cache)
