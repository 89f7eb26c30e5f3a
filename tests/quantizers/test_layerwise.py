"""Layer-wise calibration from the shards gives the whole-model path's codes, scales, zeros and logits."""
import sys
from pathlib import Path

import pytest
import torch

from edgekit.memory.plan import plan_memory
from edgekit.models.load import load_tokenizer, model_config
from edgekit.runtimes import build_runner
from edgekit.variants.registry import Variant

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from make_random_checkpoint import write_checkpoint  # noqa: E402

TWO_LAYERS = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 4096, "hidden_size": 256,
              "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
              "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
              "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 0}
CALIBRATION = "samples=4,seq_len=64"


@pytest.fixture(scope="module")
def two_layers(tmp_path_factory):
    """A random 2-layer Llama in bf16 shards (one layer a shard), as a real checkpoint is stored."""
    return str(write_checkpoint(TWO_LAYERS, tmp_path_factory.mktemp("random-llama") / "two-layers", "bf16",
                                layers_per_shard=1))


def _both_paths(variant: str, source: str):
    tokenizer = load_tokenizer(source)
    options = f"{CALIBRATION},{variant.partition(':')[2]}".rstrip(",")
    whole = build_runner(f"{variant.partition(':')[0]}:{options},low_memory=false", source, tokenizer)
    layerwise = build_runner(f"{variant.partition(':')[0]}:{options},low_memory=true", source, tokenizer)
    return whole.model, layerwise.model


@pytest.mark.parametrize("variant", ["gptq-int4-g128", "awq-int3-g128", "mixed-gptq-int2-g64-k2:rank_tokens=256",
                                     "mixed-int2-g64-k1:rank_tokens=256,high=fp16"])
def test_layerwise_equals_the_whole_model(variant, two_layers):
    whole, layerwise = _both_paths(variant, two_layers)
    expected, found = whole.state_dict(), layerwise.state_dict()
    assert list(found) == list(expected)
    assert any(k.endswith("qweight") for k in found)  # really packed: codes, scales and zeros compared below
    for key, tensor in expected.items():
        assert torch.equal(found[key], tensor), key
    ids = torch.randint(0, TWO_LAYERS["vocab_size"], (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(layerwise(input_ids=ids).logits, whole(input_ids=ids).logits)


def test_the_planner_prices_the_layerwise_path(two_layers):
    config = model_config(two_layers)
    streamed = plan_memory(config, "gptq-int4-g128:low_memory=true", context=256, device="laptop-16gb")
    whole = plan_memory(config, "gptq-int4-g128:low_memory=false", context=256, device="laptop-16gb")
    assert "layer by layer" in streamed.peak_reason and "full precision" in whole.peak_reason
    assert Variant.parse("gptq-int4-g128").entry.load == Variant.parse("mixed-int4-g128-k4").entry.load == "calibrated"


@pytest.fixture(scope="module")
def seven_b(tmp_path_factory, default_model):
    """A Llama-2-7B-shaped folder whose "weights" are not a checkpoint: only the guard may touch it."""
    import shutil

    from edgekit.core.paths import data_dir

    folder = tmp_path_factory.mktemp("llama-2-7b-shaped")
    shutil.copy(data_dir() / "configs" / "llama-2-7b.json", folder / "config.json")
    (folder / "model.safetensors").write_bytes(b"not a checkpoint")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(f"{default_model}/{name}", folder / name)
    return str(folder)


def test_a_7b_calibrates_layer_by_layer_where_the_ranking_and_qat_are_refused(seven_b):
    """On a 16 GB laptop a 7B's GPTQ fits layer by layer (27 GB in fp32 would not); the sensitivity
    ranking (whole-model KL) and QAT (whole-model training) are refused with their own reasons."""
    from edgekit.core.errors import PlanError
    from edgekit.memory.guard import admit
    from edgekit.quantizers.qat import qat_finetune
    from edgekit.quantizers.sensitivity import layer_sensitivity

    plan = admit("gptq-int4-g128:profile=laptop-16gb", seven_b)
    assert "layer by layer" in plan.peak_reason and plan.peak_bytes < 10 * 1024 ** 3
    with pytest.raises(PlanError, match="whole-model KL"):
        layer_sensitivity(seven_b, "int4-g128")
    with pytest.raises(PlanError, match="fine-tune .* Adam"):
        qat_finetune(seven_b)
