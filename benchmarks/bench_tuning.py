"""Tuning sweep: decode latency of an ONNX int4 artifact and of PyTorch under each runtime setting.

Prints each sweep's ranked table (P50/P99 per-token decode latency, decode tokens/s) and
the best setting's speed-up over the default setting measured in the same run; the ONNX
winner is written into its artifact's manifest as ``runtime_settings``. Results go to
the store as kind ``tuning``.

Usage:
  flock /tmp/edgekit-bench.lock .venv/bin/python benchmarks/bench_tuning.py [--model default] [--runs 5]
"""
from __future__ import annotations

import argparse
import os

import pandas as pd
import torch

from edgekit.measure.store import ResultStore
from edgekit.models.load import load_tokenizer
from edgekit.runtimes import cached_artifact
from edgekit.workflows.tuning import grid, onnx_variant_factory, torch_factory, tune, write_best

COLUMNS = ["rank", "label", "latency_ms_p50", "latency_ms_p99", "decode_tokens_per_s", "speedup_vs_default", "error"]


def show(title: str, report) -> None:
    print(f"\n== {title}")
    with pd.option_context("display.width", 200, "display.max_colwidth", 70):
        print(report.table[[c for c in COLUMNS if c in report.table]].to_string(index=False,
                                                                                float_format=lambda x: f"{x:.3f}"))
    print(f"best: {report.best}; P50 speed-up over the default in the same run: {report.gain_over_default:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--variant", default="onnx-int4-g32")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile out of the PyTorch sweep")
    p.add_argument("--store", default=None)
    args = p.parse_args()

    store = ResultStore(args.store)
    tokenizer = load_tokenizer(args.model)
    prompt = tokenizer("HAMLET:\nTo be, or not to be, that is the question:", return_tensors="pt",
                       add_special_tokens=False)["input_ids"]
    cores = os.cpu_count()
    print(f"model {args.model}, prompt {prompt.shape[1]} tokens, {args.new_tokens} new tokens, "
          f"{args.runs} timed runs after 1 warm-up, {cores} cores")

    onnx_default = {"accuracy_level": 4, "intra_op_threads": None, "graph_optimization_level": "all",
                    "io_binding": True}
    candidates = grid(accuracy_level=[1, 4], intra_op_threads=sorted({1, cores}),
                      graph_optimization_level=["basic", "all"],
                      io_binding=[True, False])
    onnx = tune(onnx_variant_factory(args.variant, args.model), candidates, prompt, default=onnx_default,
                new_tokens=args.new_tokens, runs=args.runs, model=args.model, variant=args.variant, store=store)
    show(f"ONNX Runtime, {args.variant}", onnx)
    best_level = onnx.best.get("accuracy_level")
    folder = cached_artifact(f"{args.variant}:accuracy_level={best_level}", args.model)
    print(f"written to {folder}/manifest.json runtime_settings: {write_best(folder, onnx)}")

    compile_values = [False] if args.no_compile else [False, True]
    torch_default = {"threads": torch.get_num_threads(), "compile": False}
    pt = tune(torch_factory("fp32", args.model), grid(threads=sorted({1, cores}), compile=compile_values), prompt,
              default=torch_default, new_tokens=args.new_tokens, runs=args.runs, model=args.model, variant="fp32",
              store=store)
    show("PyTorch fp32", pt)


if __name__ == "__main__":
    main()
