"""Print the figures of issue 9: RTN vs GPTQ/AWQ, mixed-precision Pareto points, QAT recovery.

Every quality figure is KL(fp32 || variant) ± its standard error and the perplexity change, measured
against the fp32 baseline in the same run (edgekit.workflows.compare), beside the variant's weight bytes.

    flock /tmp/edgekit-bench.lock nice -n 10 .venv/bin/python benchmarks/bench_recovering_quality.py \
        --eval-tokens 4096 --qat-steps 60
"""
from __future__ import annotations

import argparse

import torch

from edgekit.measure.quality import EvalSettings
from edgekit.quantizers.qat import QATSettings, qat_history
from edgekit.quantizers.sensitivity import layer_sensitivity, ranked
from edgekit.workflows.compare import compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=16, help="calibration windows of 256 tokens")
    parser.add_argument("--qat-steps", type=int, default=60)
    parser.add_argument("--sensitivity-scheme", default="int2-g64")
    parser.add_argument("--skip", nargs="*", default=[], choices=["sensitivity", "calibrated", "mixed", "qat"])
    args = parser.parse_args()
    settings = EvalSettings(context=256, stride=128, max_tokens=args.eval_tokens, batch_size=8)
    print(f"model={args.model} eval_tokens={args.eval_tokens} torch_threads={torch.get_num_threads()}")

    if "sensitivity" not in args.skip:
        frame = ranked(layer_sensitivity(args.model, args.sensitivity_scheme, "layer", settings=settings))
        print(f"\nsensitivity to {args.sensitivity_scheme} (one layer at a time), top 10:")
        print(frame[["target", "kl_divergence", "kl_divergence_se", "delta_ppl_pct"]].head(10).to_string(index=False))

    variants = []
    if "calibrated" not in args.skip:
        for scheme in ("int4-g128", "int3-g128"):
            variants += [scheme, f"gptq-{scheme}:samples={args.samples}", f"awq-{scheme}:samples={args.samples}"]
    if "mixed" not in args.skip:
        variants += ["int8-g64", "int4-g64", "int2-g64"] + [f"mixed-int2-g64-k{k}" for k in (2, 4, 8, 16)]
    if "qat" not in args.skip:
        qat = QATSettings(steps=args.qat_steps, eval_every=max(args.qat_steps // 4, 1), eval_tokens=1024)
        history = qat_history(args.model, qat)
        print(f"\nQAT int2-g64 ({args.qat_steps} steps, KL on the first 1024 eval tokens):")
        print(history.to_string(index=False))
        variants += ["int2-g64", f"qat-int2-g64:eval_every={qat.eval_every},eval_tokens=1024,steps={args.qat_steps}"]
    results = compare(args.model, dict.fromkeys(variants), settings=settings, latency=None)
    print("\nvariant                                  KL        ±se      top-1   Δppl %   weight MB")
    for r in results:
        m = r.metrics
        if r.status != "ok":
            print(f"{r.variant:40s} error: {r.error}")
            continue
        print(f"{r.variant:40s} {m['kl_divergence']:.5f}  {m['kl_divergence_se']:.5f}  {m['top1_agreement']:.4f}"
              f"  {m['delta_ppl_pct']:+6.2f}  {m['weight_bytes'] / 1e6:8.3f}")


if __name__ == "__main__":
    main()
