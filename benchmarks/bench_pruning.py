"""Print the figures of issue 20: pruning (magnitude, Wanda, 2:4, structured) against quantization.

One edgekit.workflows.compare run, fp32 baseline first, so every row's KL(fp32 || variant) ± se, top-1, Δppl,
stored weight bytes, decode tokens/s and P99 come from the same run on the same tokens:

1. matched bytes: magnitude, Wanda and 2:4 remove 50% of the decoder-block weights, and so do the
   structured cuts (MLP channels; whole layers), so all five reach the same bytes in a format that
   drops what was removed. "weights MB" is what the runtime really holds: unstructured and 2:4 zeros
   are stored dense ("stored as": dense zeros), because no runtime here reads a sparse format on a
   CPU (OpenVINO's sparse weight decompression needs int8 layers on an Intel AMX CPU; 2:4 kernels a
   CUDA GPU), while structured cuts hold smaller matrices. "sparse MB" is what an ideal sparse format
   (nonzeros + a 1-bit mask) would hold, "planned MB" what the planner prices from the original
   config alone. Heads pruning (whole KV groups) is listed at the share it removes;
2. pruned + quantized against quantized only (int4 / int3), and a distilled structured cut, with its
   KL won back per training minute.

    flock /tmp/edgekit-bench.lock .venv/bin/python benchmarks/bench_pruning.py --threads 1
    ... --model smollm2-135m --eval-tokens 2048 --distill-steps 6 --distill-batch 4   (the real pretrained
    model, or EDGEKIT_MODEL=smollm2-135m; sized to finish in about 15 minutes on two shared cores)

On a machine other jobs share, ``--threads 1``: with two cores under load, torch's two OpenMP threads
waiting on each other decoded the default model 7x slower (3.6 against 25 tok/s), and the latency
warm-up, which runs until two generations agree, then takes its maximum every time.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from edgekit.measure.quality import EvalSettings
from edgekit.memory.bytes import held_config, weight_bytes
from edgekit.memory.plan import _layout
from edgekit.models.config import load_config
from edgekit.models.load import resolve_source
from edgekit.pruning.spec import PruneSpec, storage
from edgekit.pruning.variants import pruning_record
from edgekit.variants.registry import Variant
from edgekit.workflows.compare import LatencySettings, compare, summary_frame


def block_weights(config) -> int:
    return sum(o * i for _, o, i, _ in _layout(config)[1])


def block_share_removed(source: str, name: str) -> float:
    """Share of the decoder-block linear weights the variant removes (from configs alone)."""
    if not name.startswith("prune-"):
        return 0.0
    spec = PruneSpec.of(name)
    if spec.structured:
        return 1 - block_weights(held_config(source, name)) / block_weights(load_config(source))
    return spec.percent / 100 if spec.percent is not None else 1 - spec.n / spec.m


def sparse_megabytes(source: str, name: str, stored: float) -> float:
    """Stored MB less the zeros an ideal sparse format would drop (plus one mask bit per weight)."""
    if storage(name) != "dense zeros":
        return stored
    block = block_weights(load_config(source))
    spec = PruneSpec.of(name)
    per_weight = 4 if spec.scheme is None else Variant.parse(spec.scheme).bits / 8
    return stored - (block_share_removed(source, name) * block * per_weight - block / 8) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("EDGEKIT_MODEL", "default"))
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=16, help="calibration windows of 256 tokens (Wanda, "
                                                                "importance)")
    parser.add_argument("--distill-steps", type=int, default=60)
    parser.add_argument("--distill-batch", type=int, default=8, help="windows of 128 tokens per distillation step")
    parser.add_argument("--latency-runs", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per timed run (after a 32-token "
                                                                   "prompt)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()
    source = resolve_source(args.model)
    calib = f"samples={args.samples}"
    distill = f"{calib},steps={args.distill_steps},batch_size={args.distill_batch}"
    variants = ["prune-magnitude-50%", f"prune-wanda-50%:{calib}", f"prune-wanda-2of4:{calib}",
                f"prune-mlp-67%:{calib}", f"prune-depth-50%:{calib}", f"prune-heads-50%:{calib}",
                "int4-g64", "int3-g64", f"prune-wanda-50%+int4-g64:{calib}", f"prune-mlp-25%+int4-g64:{calib}",
                f"prune-depth-33%+int4-g64:{calib}", f"prune-mlp-25%+distill+int4-g64:{distill}"]
    settings = EvalSettings(context=256, stride=128, max_tokens=args.eval_tokens, batch_size=8)

    def row(result) -> None:  # each row as it lands, so a run cut short still has its figures
        m = result.metrics
        print(f"{result.variant:45s} KL {m.get('kl_divergence', float('nan')):.4f} "
              f"MB {m.get('weight_bytes', 0) / 1e6:.2f} tok/s {m.get('decode_tokens_per_s', float('nan')):.1f} "
              f"p99 {m.get('latency_ms_p99', float('nan')):.1f} ms "
              f"[{time.perf_counter() - started:.0f} s] {result.error or ''}", flush=True)

    results = compare(args.model, ["fp32"] + variants, settings=settings, on_result=row, progress=False,
                      latency=LatencySettings(prompt_tokens=32, new_tokens=args.new_tokens, runs=args.latency_runs))
    names = [r.variant.split(":")[0] for r in results]
    table = summary_frame(results)
    table.insert(1, "removed", [f"{100 * block_share_removed(source, n):.0f}%" for n in names])
    table["stored as"] = [storage(n) for n in names]
    table["sparse MB"] = [sparse_megabytes(source, n, mb) for n, mb in zip(names, table["weights MB"])]
    table["planned MB"] = [weight_bytes(source, r.variant) / 1e6 for r in results]
    columns = ["variant", "removed", "KL", "KL ±se", "top-1", "Δppl %", "weights MB", "stored as", "sparse MB",
               "planned MB", "tok/s", "p99 ms", "error"]
    print(f"\n{args.model}: {args.eval_tokens} eval tokens, context 256, stride 128; latency 32+{args.new_tokens} "
          f"tokens, "
          f"{args.latency_runs} runs, {torch.get_num_threads()} torch thread(s)")
    print(table[[c for c in columns if c in table.columns]].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    record = pruning_record(args.model, f"prune-mlp-25%+distill+int4-g64:{distill}")
    first, last = record["history"][0], record["history"][-1]
    print(f"\ndistillation of prune-mlp-25%: KL {first['kl_divergence']:.4f} -> {last['kl_divergence']:.4f} "
          f"in {last['train_s'] / 60:.2f} training minutes = {record['kl_won_per_minute']:.4f} KL won back per minute "
          f"(KL of the fp32 pruned student, before int4); whole run {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
