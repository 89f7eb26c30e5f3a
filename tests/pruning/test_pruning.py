"""edgekit.pruning.variants: exact sparsity and N:M patterns, Wanda's rule, structured checkpoints that plain
transformers loads and the planner prices, composition with quantization, distillation that wins KL back."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from edgekit.core.errors import VariantError
from edgekit.core.paths import calibration_ids
from edgekit.memory.bytes import kv_cache_bytes, weight_bytes
from edgekit.memory.plan import plan_memory
from edgekit.models.config import load_config
from edgekit.models.layout import block_linears
from edgekit.models.runner import module_weight_bytes
from edgekit.pruning.masks import nm_mask, row_mask, sparsity, wanda_scores
from edgekit.pruning.spec import PruneSpec
from edgekit.pruning.structured import pruned_config
from edgekit.pruning.variants import pruned_checkpoint, pruning_record
from edgekit.quantizers.calibration import collect_inputs
from edgekit.quantizers.packed import PackedLinear
from edgekit.runtimes import build_runner
from edgekit.variants.registry import Variant

CALIB = "samples=2,seq_len=64"  # the smallest calibration that exercises the real path


def test_row_mask_removes_exactly_the_share_in_every_row():
    scores = torch.rand(6, 40, generator=torch.Generator().manual_seed(0))
    for percent in (25, 50, 70):
        mask = row_mask(scores, percent)
        assert (mask.sum(1) == 40 - round(40 * percent / 100)).all()
        kept_min = torch.where(mask, scores, torch.inf).min(1).values
        dropped_max = torch.where(mask, -torch.inf, scores).max(1).values
        assert (dropped_max <= kept_min).all()  # the lowest scores go, row by row


def test_nm_mask_keeps_n_of_every_m():
    scores = torch.rand(5, 16, generator=torch.Generator().manual_seed(1))
    mask = nm_mask(scores, 2, 4)
    assert (mask.reshape(5, 4, 4).sum(-1) == 2).all()
    assert torch.equal(mask[0, :4], scores[0, :4] >= scores[0, :4].sort().values[2])
    with pytest.raises(VariantError, match="divisible by 4"):
        nm_mask(torch.rand(2, 6), 2, 4)


def test_wanda_follows_the_papers_rule_on_a_hand_made_example():
    # one row, |W| = [4, 1, 2, 3]; inputs whose column norms are [0.1, 10, 1, 1] (Sun et al. 2023, Eq. 1)
    weight = torch.tensor([[4.0, -1.0, 2.0, -3.0]])
    x = torch.tensor([[0.1, 10.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])  # ||X_j||_2 = [0.1, 10, 1, 1]
    scores = wanda_scores(weight, x.norm(dim=0))
    assert torch.allclose(scores, torch.tensor([[0.4, 10.0, 2.0, 3.0]]))
    assert row_mask(scores, 50).tolist() == [[False, True, False, True]]  # Wanda drops |W|=4 and 2
    assert row_mask(weight.abs(), 50).tolist() == [[True, False, False, True]]  # magnitude drops 1 and 2


def test_wanda_variant_prunes_every_row_by_activation_weighted_scores(default_model, tokenizer):
    linears = block_linears(AutoModelForCausalLM.from_pretrained(default_model))
    original = {n: m.weight.detach().clone() for n, m in linears.items()}
    runner = build_runner(f"prune-wanda-50%:{CALIB}", default_model, tokenizer)
    pruned = block_linears(runner.model)
    assert sparsity(runner.model) == 0.5
    for name, linear in pruned.items():  # exactly half of every row, and only zeros where there were weights
        assert ((linear.weight == 0).sum(1) == linear.in_features // 2).all(), name
        kept = linear.weight != 0
        assert torch.equal(linear.weight[kept], original[name][kept])
    # the first block sees unpruned inputs: its masks are the paper's rule on the calibration norms
    fresh = AutoModelForCausalLM.from_pretrained(default_model)
    first = [n for n in pruned if n.startswith("model.layers.0.")]
    sums = {}
    collect_inputs(fresh, first, calibration_ids(tokenizer, 2, 64, 0),
                   lambda n, x: sums.__setitem__(n, sums.get(n, 0) + (x * x).sum(0)))
    for name in first:
        expected = row_mask(wanda_scores(original[name], sums[name].sqrt()), 50)
        assert torch.equal(pruned[name].weight != 0, expected), name
    magnitude = row_mask(original["model.layers.0.mlp.down_proj"].abs(), 50)
    assert not torch.equal(magnitude, pruned["model.layers.0.mlp.down_proj"].weight != 0)  # not |W| alone


def test_2of4_composes_with_int4_and_is_priced_dense(default_model, tokenizer):
    variant = "prune-magnitude-2of4+int4-g64"
    runner = build_runner(variant, default_model, tokenizer)
    packed = [m for m in runner.model.modules() if isinstance(m, PackedLinear)]
    assert len(packed) == 42 and all((m.bits, m.group_size) == (4, 64) for m in packed)
    for m in packed:  # the pruned half stays (about) zero through the codes: within a small step of it
        w = m.dequantized_weight().abs().reshape(m.out_features, -1, 4).sort(-1).values
        assert (w[..., :2] <= 0.02 * w.amax()).float().mean() > 0.99
    # stored dense: the same bytes as int4-g64 alone, as the registry prices it
    assert weight_bytes(default_model, variant) == weight_bytes(default_model, "int4-g64")
    assert abs(runner.weight_bytes() - weight_bytes(default_model, variant)) <= 0.02 * runner.weight_bytes()


@pytest.mark.parametrize("name, changed", [("prune-mlp-25%", {"intermediate_size": 576}),
                                           ("prune-heads-50%", {"num_attention_heads": 2, "num_key_value_heads": 1,
                                                                "head_dim": 64}),
                                           ("prune-depth-33%", {"num_hidden_layers": 4})])
def test_structured_checkpoint_loads_plainly_and_the_planner_prices_it(name, changed, default_model, tokenizer):
    variant = f"{name}:{CALIB}"
    folder = pruned_checkpoint(default_model, variant, tokenizer, progress=False)
    model = AutoModelForCausalLM.from_pretrained(folder)  # plain transformers, no edgekit code
    for key, value in changed.items():
        assert getattr(model.config, key) == value == getattr(pruned_config(default_model, variant), key)
    reloaded = module_weight_bytes(model)
    runner = build_runner(variant, default_model, tokenizer)
    planned = weight_bytes(default_model, variant)  # the planner, from the original config alone
    assert planned < weight_bytes(default_model, "fp32")
    for held in (reloaded, runner.weight_bytes(), weight_bytes(str(folder), "fp32")):
        assert abs(planned - held) <= 0.02 * held
    plan = plan_memory(default_model, variant, context=512)  # the KV cache is the pruned model's too
    assert plan.kv_cache_bytes == kv_cache_bytes(model.config, 512, 1, "fp32")
    # the runner decodes with its KV cache exactly as a full forward pass predicts (layer indices renumbered)
    prompt = calibration_ids(tokenizer, 1, 24, 3)
    tokens = list(runner.generate_stream(prompt, 4))
    logits = runner.logits(torch.cat([prompt, torch.tensor([tokens[:3]])], dim=1))
    assert logits[0, -4:].argmax(-1).tolist() == tokens


def test_heads_pruning_removes_whole_kv_groups_exactly(default_model, tokenizer):
    """Removing a KV group (its key/value head, its query heads, their o_proj columns) must give the same
    logits as the original model with those query heads' o_proj columns zeroed: heads add up independently."""
    variant = f"prune-heads-50%:{CALIB}"
    pruned = AutoModelForCausalLM.from_pretrained(pruned_checkpoint(default_model, variant, tokenizer, progress=False))
    kept = pruning_record(default_model, variant)["kept"]  # per layer, the KV groups kept
    masked = AutoModelForCausalLM.from_pretrained(default_model)
    heads, kv, head_dim = 4, 2, 64  # the default model: grouped-query attention, 2 query heads per KV head
    for layer, groups in zip(masked.model.layers, kept):
        assert len(groups) == 1
        with torch.no_grad():
            for group in set(range(kv)) - set(groups):
                layer.self_attn.o_proj.weight[:, group * (heads // kv) * head_dim:(group + 1) * (heads // kv)
                                              * head_dim] = 0
    for layer in pruned.model.layers:  # k and v shrink with q and o
        attn = layer.self_attn
        assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features,
                attn.o_proj.in_features) == (128, 64, 64, 128)
    ids = calibration_ids(tokenizer, 2, 32, 5)
    with torch.no_grad():
        assert torch.allclose(pruned(ids).logits, masked(ids).logits, atol=1e-4)


def test_heads_pruning_groups_follow_the_attention_kind():
    mha = load_config("llama-2-7b")  # multi-head: every head is its own group
    assert (pruned_config(mha, "prune-heads-25%").num_attention_heads,
            pruned_config(mha, "prune-heads-25%").num_key_value_heads) == (24, 24)
    gqa = load_config("llama-3-8b")  # 32 query heads on 8 KV heads: groups of 4
    cfg = pruned_config(gqa, "prune-heads-25%")
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (24, 6)
    assert kv_cache_bytes(cfg, 4096) == 0.75 * kv_cache_bytes(gqa, 4096)
    mqa = {**gqa.to_dict(), "num_key_value_heads": 1}
    with pytest.raises(VariantError, match="single key/value head"):
        pruned_config(mqa, "prune-heads-50%")


def test_structured_prune_plus_int4_is_priced_from_the_pruned_config(default_model, tokenizer):
    variant = f"prune-mlp-25%+int4-g128:{CALIB}"
    runner = build_runner(variant, default_model, tokenizer)
    down = runner.model.get_submodule("model.layers.0.mlp.down_proj")
    assert isinstance(down, PackedLinear) and down.in_features == 576
    planned = weight_bytes(default_model, variant)
    assert planned < weight_bytes(default_model, "int4-g128")
    assert abs(planned - runner.weight_bytes()) <= 0.02 * runner.weight_bytes()


def test_distillation_wins_kl_back_and_keeps_the_mask(default_model, tokenizer):
    variant = "prune-magnitude-50%+distill:steps=4,batch_size=4,seq_len=64,eval_every=0,eval_tokens=256,lr=5e-4"
    record = pruning_record(default_model, variant)
    kl = [row["kl_divergence"] for row in record["history"]]
    assert [row["step"] for row in record["history"]] == [0, 4]
    assert kl[-1] < kl[0] and record["kl_won_per_minute"] > 0
    assert record["sparsity"] == 0.5  # the zeros stayed zero while the rest learned
    runner = build_runner(variant, default_model, tokenizer)
    assert sparsity(runner.model) == 0.5


@pytest.mark.parametrize("name, message", [("prune-mlp-2of4", "magnitude or wanda"),
                                           ("prune-heads-25%", "removes no group"),
                                           ("prune-depth-100%", "below 100%"),
                                           ("prune-wanda-0%", "above 0%"),
                                           ("prune-wanda-4of2", "0 < n < m")])
def test_bad_pruning_variants_say_what_to_write(name, message, default_model):
    with pytest.raises(VariantError, match=message):
        pruned_config(default_model, name)


def test_grammar_parses_stages_in_order():
    spec = PruneSpec.of("prune-wanda-50%+distill+gptq-int4-g128:steps=3")
    assert (spec.method, spec.percent, spec.distill, spec.scheme) == ("wanda", 50, True, "gptq-int4-g128")
    assert spec.stage == "prune-wanda-50%+distill"
    assert PruneSpec.of("prune-magnitude-2of4").amount == "2of4"
    assert Variant.parse("prune-depth-33%+distill").entry.load == "training"
    with pytest.raises(VariantError, match="unknown option"):
        Variant.parse("prune-wanda-50%:steps=3")  # distillation options need +distill
