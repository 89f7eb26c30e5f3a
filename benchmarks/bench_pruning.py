"""Print the figures of issue 20: pruning (magnitude, Wanda, 2:4, structured) against quantization.

One edgekit.compare run, fp32 baseline first, so every row's KL(fp32 || variant) ± se, top-1, Δppl,
stored weight bytes, decode tokens/s and P99 come from the same run on the same tokens:

1. matched share removed: magnitude, Wanda and 2:4 at 50% of the decoder-block weights, against the
   structured cuts removing the same share (MLP channels; whole layers) — the "stored MB" column
   is what the runtime really holds (unstructured zeros are stored dense: no runtime here reads a
   sparse format on a CPU), "sparse MB" what an ideal sparse format (nonzeros + a 1-bit mask) would;
2. pruned + quantized against quantized only (int4 / int3), and a distilled structured cut,
   with its KL won back per training minute.

    flock /tmp/edgekit-bench.lock nice -n 10 .venv/bin/python benchmarks/bench_pruning.py --eval-tokens 4096
"""
from __future__ import annotations

import argparse

import torch

from edgekit.compare import LatencySettings, compare, summary_frame
from edgekit.loading import resolve_source
from edgekit.measure import EvalSettings
from edgekit.plan import _layout, load_config, weight_bytes
from edgekit.pruning import PruneSpec, pruned_config, pruning_record
from edgekit.registry import Variant


def block_share_removed(source: str, name: str) -> float:
    """Share of the decoder-block linear weights the variant removes (from configs alone)."""
    block = lambda cfg: sum(o * i for _, o, i, _ in _layout(cfg)[1])
    full = block(load_config(source))
    if not name.startswith("prune-"):
        return 0.0
    spec = PruneSpec.of(name)
    if spec.structured:
        return 1 - block(pruned_config(source, name)) / full
    return spec.percent / 100 if spec.percent is not None else 1 - spec.n / spec.m


def sparse_megabytes(source: str, name: str, stored: float) -> float:
    """Stored MB less the zeros an ideal sparse format would drop (plus one mask bit per weight)."""
    v = Variant.parse(name)
    if not name.startswith("prune-") or PruneSpec.of(v).structured:
        return stored
    block = sum(o * i for _, o, i, _ in _layout(load_config(source))[1])
    spec = PruneSpec.of(v)
    share = block_share_removed(source, name)
    per_weight = 4 if spec.scheme is None else Variant.parse(spec.scheme).bits / 8
    return stored - (share * block * per_weight - block / 8) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=16, help="calibration windows of 256 tokens (Wanda, importance)")
    parser.add_argument("--distill-steps", type=int, default=60)
    parser.add_argument("--latency-runs", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    source = resolve_source(args.model)
    calib = f"samples={args.samples}"
    distill = f"{calib},steps={args.distill_steps}"
    variants = [f"prune-magnitude-50%", f"prune-wanda-50%:{calib}", f"prune-wanda-2of4:{calib}",
                f"prune-mlp-67%:{calib}", f"prune-depth-50%:{calib}",
                "int4-g64", "int3-g64", f"prune-wanda-50%+int4-g64:{calib}", f"prune-mlp-25%+int4-g64:{calib}",
                f"prune-depth-33%+int4-g64:{calib}", f"prune-mlp-25%+distill+int4-g64:{distill}"]
    settings = EvalSettings(context=256, stride=128, max_tokens=args.eval_tokens, batch_size=8)
    def row(result) -> None:  # each row as it lands, so a run cut short still has its figures
        m = result.metrics
        print(f"{result.variant:45s} KL {m.get('kl_divergence', float('nan')):.4f} "
              f"MB {m.get('weight_bytes', 0) / 1e6:.2f} tok/s {m.get('decode_tokens_per_s', float('nan')):.1f} "
              f"p99 {m.get('latency_ms_p99', float('nan')):.1f} ms {result.error or ''}", flush=True)

    results = compare(args.model, ["fp32"] + variants, settings=settings, on_result=row, progress=False,
                      latency=LatencySettings(prompt_tokens=32, new_tokens=32, runs=args.latency_runs))
    print()
    table = summary_frame(results)
    table.insert(1, "removed", [f"{100 * block_share_removed(source, r.variant.split(':')[0]):.0f}%" for r in results])
    table["sparse MB"] = [sparse_megabytes(source, r.variant.split(":")[0], mb)
                          for r, mb in zip(results, table["weights MB"])]
    table["planned MB"] = [weight_bytes(pruned_config(source, r.variant) if r.variant.startswith("prune-") else source,
                                        r.variant) / 1e6 for r in results]
    columns = ["variant", "removed", "KL", "KL ±se", "top-1", "Δppl %", "weights MB", "planned MB", "sparse MB",
               "tok/s", "p99 ms"]
    print(table[[c for c in columns if c in table.columns]].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    record = pruning_record(args.model, f"prune-mlp-25%+distill+int4-g64:{distill}")
    first, last = record["history"][0], record["history"][-1]
    print(f"\ndistillation of prune-mlp-25%: KL {first['kl_divergence']:.4f} -> {last['kl_divergence']:.4f} "
          f"in {last['train_s'] / 60:.2f} training minutes = {record['kl_won_per_minute']:.4f} KL won back per minute "
          "(KL of the fp32 pruned student, before int4)")


if __name__ == "__main__":
    main()
