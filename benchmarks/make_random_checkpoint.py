"""Write a random-weight Llama checkpoint of a given shape, shard by shard, without holding it in memory.

Benchmarks need models bigger than the shipped one: a ~214M Llama where runtime kernels,
not Python overhead, decide decode speed, and a 7B-shaped model (Llama-2-7B config) to
prove memory planning, quantize-on-load and layer streaming on a 24 GB CPU machine. The
weights are random (N(0, 0.02), norms at 1), which is all a speed or memory measurement
needs; the tokenizer is the default model's (its ids are valid for any vocab >= 4096).

Usage:
  python benchmarks/make_random_checkpoint.py --preset 214m --out edgekit-results/random-llama-214m
  python benchmarks/make_random_checkpoint.py --preset llama-2-7b --dtype bf16 --out edgekit-results/random-llama-2-7b
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from edgekit.core.paths import data_dir, default_model_path

PRESETS = {
    "214m": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 4096,
             "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 16,
             "num_attention_heads": 16, "num_key_value_heads": 16, "max_position_embeddings": 2048,
             "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
             "bos_token_id": 0, "eos_token_id": 0},
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def layer_tensors(config: dict, i: int, dtype: torch.dtype, gen: torch.Generator) -> dict[str, torch.Tensor]:
    h, m = config["hidden_size"], config["intermediate_size"]
    kv = h // config["num_attention_heads"] * config.get("num_key_value_heads", config["num_attention_heads"])
    shapes = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
              "self_attn.o_proj": (h, h), "mlp.gate_proj": (m, h), "mlp.up_proj": (m, h), "mlp.down_proj": (h, m)}
    out = {f"model.layers.{i}.{name}.weight": (torch.randn(shape, generator=gen) * 0.02).to(dtype)
           for name, shape in shapes.items()}
    out[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(h, dtype=dtype)
    out[f"model.layers.{i}.post_attention_layernorm.weight"] = torch.ones(h, dtype=dtype)
    return out


def write_checkpoint(config: dict, out: Path, dtype: str = "fp32", layers_per_shard: int = 4, seed: int = 0) -> Path:
    torch_dtype = DTYPES[dtype]
    gen = torch.Generator().manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    h, v, n = config["hidden_size"], config["vocab_size"], config["num_hidden_layers"]
    starts = range(0, n, layers_per_shard)
    count = len(starts) + 2  # embeddings, the layer shards, norm + head

    def shards():  # each built only when it is written: one shard in memory at a time
        yield {"model.embed_tokens.weight": (torch.randn(v, h, generator=gen) * 0.02).to(torch_dtype)}
        for start in starts:
            shard = {}
            for i in range(start, min(n, start + layers_per_shard)):
                shard.update(layer_tensors(config, i, torch_dtype, gen))
            yield shard
        yield {"model.norm.weight": torch.ones(h, dtype=torch_dtype),
               "lm_head.weight": (torch.randn(v, h, generator=gen) * 0.02).to(torch_dtype)}

    weight_map, total = {}, 0
    for k, shard in enumerate(shards()):
        name = f"model-{k + 1:05d}-of-{count:05d}.safetensors"
        save_file(shard, out / name, metadata={"format": "pt"})
        for key, t in shard.items():
            weight_map[key] = name
            total += t.numel() * t.element_size()
        del shard
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps({**config, "torch_dtype": {"fp32": "float32", "bf16": "bfloat16",
                                                                           "fp16": "float16"}[dtype]}, indent=1))
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(default_model_path() / f, out / f)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", required=True, help="214m, or a config name in data/configs (llama-2-7b...)")
    p.add_argument("--dtype", default="fp32", choices=DTYPES)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.preset in PRESETS:
        config = PRESETS[args.preset]
    else:
        config = json.loads((data_dir() / "configs" / f"{args.preset}.json").read_text())
    if (args.out / "config.json").exists():
        print(f"{args.out} exists; delete it to write it again")
        return
    print(f"wrote {write_checkpoint(config, args.out, args.dtype, seed=args.seed)}")


if __name__ == "__main__":
    main()
