"""Whole-model vs layer-wise GPTQ: planned vs measured peak RSS and wall time, same checkpoint, same run.

Each path runs in a fresh child process (so each peak is its own, :class:`edgekit.measure.peak_memory.PeakMemory`)
and builds the variant through :func:`edgekit.runtimes.build_runner`, the guarded path a user takes:
``low_memory=false`` loads the fp32 model whole and calibrates it block by block; ``low_memory=true``
calibrates layer by layer from the memory-mapped shards (:mod:`edgekit.quantizers.layerwise`). For each it prints
the planner's peak (:func:`edgekit.memory.plan.plan_memory`, this machine), the measured peak RSS above what
the process held before the build (the runtime's libraries), the bound of issue 17 (the quantized
model + one fp32 decoder layer + the calibration activations) and the measured / bound ratio (the
issue asks for at most 1.5 layer by layer), and the wall time. The whole-model path is the baseline
measured in the same run; the quantized weights of both paths are compared for identity.

The 214M-class random checkpoint (``make_random_checkpoint.py --preset 214m``) is written on first use.
``--model-7b`` adds the 7B-shaped bf16 checkpoint layer by layer only (its fp32 model, 27 GB, is refused
on a 24 GB machine; the refusal is printed): it runs under ``flock /tmp/edgekit-7b.lock`` and takes tens
of minutes on 2 cores, so keep ``--samples`` small.

  python benchmarks/bench_calibrated_layerwise.py
  python benchmarks/bench_calibrated_layerwise.py --model-7b /tmp/ck7b/llama-2-7b --samples 8 --only-7b
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

GB = 1e9
HERE = Path(__file__).resolve().parent


def measure_one(model: str, variant: str) -> dict:
    import torch

    from edgekit.core.errors import PlanError
    from edgekit.core.paths import SAMPLES, SEQ_LEN
    from edgekit.measure.peak_memory import PeakMemory, release_memory, rss_breakdown
    from edgekit.memory.plan import plan_memory
    from edgekit.models.layout import decoder_blocks
    from edgekit.quantizers.packed import PackedLinear
    from edgekit.runtimes import build_runner
    from edgekit.variants.registry import Variant

    parsed = Variant.parse(variant)
    plan = plan_memory(model, variant, context=int(parsed.option("context", 2048)), device="this-machine")
    release_memory()
    start = rss_breakdown()["rss_bytes"]
    try:
        with PeakMemory() as peak:
            t0 = time.perf_counter()
            runner = build_runner(variant, model)
            wall = time.perf_counter() - t0
    except PlanError as exc:
        return {"variant": variant, "refused": str(exc)}
    net = runner.model
    config = net.config
    layer = next(iter(decoder_blocks(net).values()))
    layer_fp32 = 4 * sum(m.in_features * m.out_features for m in layer.modules() if isinstance(m, PackedLinear))
    tokens = int(parsed.option("samples", SAMPLES)) * int(parsed.option("seq_len", SEQ_LEN))
    activations = 2 * tokens * config.hidden_size * 4  # hidden states into and out of one layer, fp32
    digest = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        digest.update(name.encode() + tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return {"variant": variant, "planned_peak": plan.peak_bytes, "plan_reason": plan.peak_reason,
            "start_rss": start, "peak_rss": peak.result["peak_rss_bytes"], "wall_s": wall,
            "quantized": runner.weight_bytes(), "layer_fp32": layer_fp32, "activations": activations,
            "state_sha256": digest.hexdigest()[:16]}


def run_child(model: str, variant: str) -> dict:
    child = subprocess.run([sys.executable, __file__, "--one", variant, "--model", model], capture_output=True,
                           text=True)
    lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        tail = child.stderr.strip().splitlines()[-1] if child.stderr.strip() else "no output"
        return {"variant": variant, "refused": f"failed: {tail}"}
    return json.loads(lines[0][len("RESULT "):])


HEADER = (f"{'variant':66} {'planned':>8} {'measured':>9} {'meas/plan':>9} {'bound':>7} {'meas/bound':>10} "
          f"{'wall':>8}  weights")
LEGEND = ("planned: the planner's load peak; measured: peak RSS above the process before the build (runtime "
          "libraries excluded); bound: quantized model + one fp32 layer + calibration activations")


def report(r: dict) -> None:
    """One row, printed as it lands."""
    if "refused" in r:
        print(f"{r['variant']:66} {r['refused']}", flush=True)
        return
    job = r["peak_rss"] - r["start_rss"]
    bound = r["quantized"] + r["layer_fp32"] + r["activations"]
    print(f"{r['variant']:66} {r['planned_peak'] / GB:7.2f}G {job / GB:8.2f}G {job / r['planned_peak']:9.2f} "
          f"{bound / GB:6.2f}G {job / bound:10.2f} {r['wall_s']:7.1f}s  {r['state_sha256']}", flush=True)


def compare_paths(model: str, variant: str) -> None:
    """Whole model, then layer by layer, each row as it lands; then whether their weights are identical."""
    print(f"\n== {model}\n{HEADER}", flush=True)
    rows = []
    for flag in ("false", "true"):
        rows.append(run_child(model, f"{variant},low_memory={flag}"))
        report(rows[-1])
    if all("state_sha256" in r for r in rows):
        print("identical quantized weights:", rows[0]["state_sha256"] == rows[1]["state_sha256"])
    print(LEGEND)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="edgekit-results/random-llama-214m")
    p.add_argument("--variant", default="gptq-int4-g128")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--device", default="cpu", help="where the model is calibrated (peak RSS is measured on cpu)")
    p.add_argument("--model-7b", help="the 7B-shaped bf16 checkpoint (e.g. /tmp/ck7b/llama-2-7b), layer by layer only")
    p.add_argument("--only-7b", action="store_true", help="skip the 214M comparison")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:  # child process: measure one build, print one JSON line
        print("RESULT " + json.dumps(measure_one(args.model, args.one)))
        return
    variant = f"{args.variant}:samples={args.samples},seq_len={args.seq_len},context=256,device={args.device}"
    if not args.only_7b:
        if not (Path(args.model) / "config.json").exists():
            sys.path.insert(0, str(HERE))
            from make_random_checkpoint import PRESETS, write_checkpoint
            write_checkpoint(PRESETS["214m"], Path(args.model))
        compare_paths(args.model, variant)
    if args.model_7b:
        import fcntl

        with open("/tmp/edgekit-7b.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # never two 7B jobs at once on this machine
            compare_paths(args.model_7b, variant)


if __name__ == "__main__":
    main()
