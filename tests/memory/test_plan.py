"""Memory planning: exact parameter counts, planned vs measured bytes, refusal, offload, quantize-on-load."""
import json

import pytest
import torch

from edgekit.core.errors import PlanError
from edgekit.memory.bytes import kv_cache_bytes, weight_bytes
from edgekit.memory.plan import plan_memory
from edgekit.memory.profiles import GIB, device_profiles, load_profile
from edgekit.models.config import known_models, parameter_count
from edgekit.models.runner import module_weight_bytes
from edgekit.runtimes import build_runner

EXACT = {"llama-2-7b": 6_738_415_616, "mistral-7b": 7_241_732_096, "qwen2.5-7b": 7_615_616_512,
         "llama-3-8b": 8_030_261_248}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_parameter_counts_of_known_models_are_exact(name):
    assert name in known_models()
    assert parameter_count(name) == EXACT[name]


@pytest.fixture(scope="module")
def fp32_runner(default_model, tokenizer):
    return build_runner("fp32", default_model, tokenizer)


def test_parameter_count_of_default_model_matches_weights(default_model, fp32_runner):
    assert parameter_count(default_model) == sum(p.numel() for p in fp32_runner.model.parameters())


@pytest.mark.parametrize("variant", ["fp32", "fp16", "int8", "nf4", "nf4:double_quant=true", "nf4:compute_dtype=bf16",
                                     "int4-g128", "int3-g64"])
def test_planned_weight_bytes_match_built_variant(variant, default_model, tokenizer):
    runner = build_runner(variant, default_model, tokenizer)
    measured = runner.weight_bytes()
    runner.close()
    planned = weight_bytes(default_model, variant)
    assert abs(planned - measured) / measured < 0.02, (planned, measured)


def test_bitsandbytes_keeps_the_checkpoint_dtype_and_computes_in_its_own():
    """Unquantized weights and activations/KV are two facts: nf4:compute_dtype=bf16 on an fp32 checkpoint holds
    its embeddings in fp32 (as bitsandbytes leaves them) and computes in bf16."""
    from edgekit.memory.bytes import activation_dtype
    from edgekit.variants.registry import Variant

    variant = Variant.parse("nf4:compute_dtype=bf16")
    assert variant.entry.dense(variant, "fp32") == "fp32"
    assert activation_dtype("default", variant) == "bf16"


def test_layer_schemes_price_a_mixed_precision_model(default_model, fp32_runner, tokenizer):
    from edgekit.models.layout import block_linears, replace_module
    from edgekit.quantizers.packed import PackedLinear, quantize_rtn

    model = build_runner("fp32", default_model, tokenizer).model
    names = sorted(block_linears(model))[:4]
    linears = {n: block_linears(model)[n] for n in names}
    quantize_rtn(model, 4, 128, skip=frozenset(names))
    for name, linear in linears.items():
        replace_module(model, name, PackedLinear.from_linear(linear, 8, 128))
    planned = weight_bytes(default_model, "int4-g128", {n: "int8-g128" for n in names})
    assert planned != weight_bytes(default_model, "int4-g128")
    assert abs(planned - module_weight_bytes(model)) / module_weight_bytes(model) < 0.02


def test_kv_cache_bytes_match_a_real_cache(default_model, fp32_runner):
    from transformers import DynamicCache

    cache = DynamicCache()
    with torch.inference_mode():
        fp32_runner.model(input_ids=torch.zeros(2, 37, dtype=torch.long), past_key_values=cache, use_cache=True)
    real = sum(layer.keys.numel() * 4 + layer.values.numel() * 4 for layer in cache.layers)
    assert kv_cache_bytes(default_model, 37, 2, "fp32") == real


def test_plan_json_holds_the_contract_fields():
    plan = plan_memory("llama-2-7b", "nf4", context=4096, device="laptop-16gb")
    data = json.loads(json.dumps(plan.to_dict()))
    for key in ("parameters", "weight_bytes", "kv_cache_bytes", "activation_bytes", "total_bytes", "fits",
                "device", "verdict", "offload"):
        assert key in data
    assert data["total_bytes"] >= data["weight_bytes"] + data["kv_cache_bytes"] + data["activation_bytes"]
    assert plan.fits and "fits" in plan.summary()


def test_7b_fp16_on_a_laptop_does_not_fit_and_says_what_would():
    plan = plan_memory("llama-2-7b", "fp16", context=4096, device="laptop-16gb")
    assert not plan.fits
    assert "nf4" in plan.alternatives["variants"] or "int4-g128" in plan.alternatives["variants"]
    places = set(plan.offload["device_map"].values())
    assert "disk" in places and "cpu" in places


def test_gpu_offload_map_fills_the_gpu_first():
    plan = plan_memory("llama-3-8b", "fp32", context=2048, device="rtx-3060-12gb")
    assert not plan.fits
    placed = list(plan.offload["device_map"].values())
    assert placed[0] == 0 and "cpu" in placed and placed.index("cpu") > placed.index(0)
    assert plan.offload["max_memory"][0] <= load_profile("rtx-3060-12gb").accelerator_budget


def test_npu_splits_on_chip_and_host_memory_and_refuses_what_it_cannot_run():
    plan = plan_memory("llama-2-7b", "onnx-int4-g128", context=256, device="npu-soc-16gb")
    assert plan.fits and "NPU memory" in plan.verdict
    assert 0 in plan.offload["device_map"].values() and "cpu" in plan.offload["device_map"].values()
    assert not plan_memory("llama-2-7b", "nf4", context=1024, device="npu-soc-16gb").fits


@pytest.mark.parametrize("variant", ["onnx-int8", "gguf-q4_0", "ov-int4-g128", "mixed-int4-g128-k4", "awq-int4-g128"])
def test_exported_and_calibrated_variants_are_planned(variant):
    assert 0 < weight_bytes("mistral-7b", variant) < weight_bytes("mistral-7b", "fp16")


def test_profiles_ship_and_user_profiles_load(tmp_path):
    for name in device_profiles():
        assert load_profile(name).host_bytes >= 0
    mine = tmp_path / "board.json"
    mine.write_text(json.dumps({"name": "board", "kind": "cpu", "host_gib": 4, "host_reserved_gib": 1}))
    assert load_profile(str(mine)).host_budget == 3 * GIB
    with pytest.raises(PlanError, match="unknown device profile"):
        load_profile("no-such-board")


def _tiny_profile(tmp_path, default_model) -> str:
    """A CPU profile with room for half the fp32 default model (plus its KV cache and activations)."""
    plan = plan_memory(default_model, "fp32", context=256, device="cpu-24gb")
    room = plan.weight_bytes // 2 + plan.kv_cache_bytes + plan.activation_bytes
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"name": "tiny", "kind": "cpu", "host_gib": room / GIB, "runtime_overhead_gib": 0}))
    return str(path)


def test_a_load_that_cannot_fit_is_refused(tmp_path, default_model, tokenizer):
    profile = _tiny_profile(tmp_path, default_model)
    with pytest.raises(PlanError, match="offload=true"):
        build_runner(f"fp32:profile={profile},context=256", default_model, tokenizer)


def test_offload_loads_with_the_plans_device_map(tmp_path, default_model, tokenizer, fp32_runner, eval_ids):
    profile = _tiny_profile(tmp_path, default_model)
    plan = plan_memory(default_model, "fp32", context=256, device=profile)
    runner = build_runner(f"fp32:profile={profile},context=256,offload=true", default_model, tokenizer)
    assert runner.model.hf_device_map == plan.offload["device_map"]
    assert "disk" in runner.model.hf_device_map.values()
    ids = eval_ids[:24].unsqueeze(0)
    torch.testing.assert_close(runner.logits(ids), fp32_runner.logits(ids))


@pytest.mark.parametrize("variant", ["nf4", "int8"])
def test_quantize_on_load_equals_from_pretrained(variant, default_model, tokenizer, eval_ids):
    reference = build_runner(variant, default_model, tokenizer)
    streamed = build_runner(f"{variant}:low_memory=true", default_model, tokenizer)
    assert streamed.weight_bytes() == reference.weight_bytes()
    ids = eval_ids[:24].unsqueeze(0)
    torch.testing.assert_close(streamed.logits(ids), reference.logits(ids))


@pytest.mark.parametrize("variant", ["int4-g32", "int3-g64"])
def test_packing_while_loading_equals_packing_after_a_full_load(variant, default_model, biased_checkpoint, eval_ids):
    for source in (default_model, biased_checkpoint):
        reference = build_runner(f"{variant}:low_memory=false", source)
        streamed = build_runner(f"{variant}:low_memory=true", source)
        assert streamed.weight_bytes() == reference.weight_bytes() == weight_bytes(source, variant)
        ids = eval_ids[:24].unsqueeze(0)
        torch.testing.assert_close(streamed.logits(ids), reference.logits(ids), rtol=0, atol=0)


def test_a_big_checkpoint_packs_while_loading_so_the_plan_admits_it():
    """A 7B as int4-g128 on this 24 GB class of machine: streamed, its peak is the packed model plus one
    fp32 tensor, not the fp32 model (26.8 GiB) it used to need."""
    plan = plan_memory("llama-2-7b", "int4-g128", context=2048, device="cpu-24gb")
    full = plan_memory("llama-2-7b", "int4-g128:low_memory=false", context=2048, device="cpu-24gb")
    assert plan.fits and plan.peak_bytes < plan.total_bytes + 1.1 * GIB
    assert not full.fits and full.peak_bytes > 26 * GIB


def test_cli_plan_writes_json(tmp_path, capsys):
    from edgekit.cli import main

    out = tmp_path / "plan.json"
    assert main(["plan", "--config", "qwen2.5-7b", "--variant", "int4-g128", "--context", "2048",
                 "--device", "cpu-24gb", "--json", str(out)]) in (0, None)
    assert json.loads(out.read_text())["parameters"] == EXACT["qwen2.5-7b"]
    assert "qwen2.5-7b" in capsys.readouterr().out


def test_every_entry_names_a_load_kind_the_planner_prices():
    """The registry stores a load kind by name; its meaning and arithmetic live in one table (memory.peak)."""
    from edgekit.memory.peak import LOAD_KINDS
    from edgekit.variants.registry import entries

    assert {entry.load for entry in entries()} <= set(LOAD_KINDS)


@pytest.mark.parametrize("variant", ["kq4", "kq4:embed=0"])
def test_kquant_embedding_is_priced_as_held(variant, default_model, tokenizer):
    """kq quantizes the token embedding too (8 bits by default): the planner prices it so, not at fp32.
    (Its block linears are priced at the larger of bits and sensitive: an upper bound.)"""
    from edgekit.memory.bytes import module_bytes

    runner = build_runner(variant, default_model, tokenizer)
    held = module_weight_bytes(runner.model.get_input_embeddings())
    runner.close()
    planned = module_bytes(default_model, variant)["model.embed_tokens"]
    assert abs(planned - held) / held < 0.02, (planned, held)
