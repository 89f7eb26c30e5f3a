"""The ``edgekit`` command line: argument parsing only; every command calls the library.

The library is imported inside each command, not at the top, so that ``edgekit --help`` and a
mistyped command answer at once instead of after importing torch and every runtime.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from edgekit.core.errors import EdgekitError


def _name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _variant_list(text: str) -> list[str]:
    """Comma-separated variant names, where a variant's own options are comma-separated too: a ``key=value``
    item (no colon before its ``=``) continues the variant before it ("int4-g32:embed=8,compile=true,fp32"
    is two)."""
    names: list[str] = []
    for item in _name_list(text):
        if names and "=" in item and ":" not in item.partition("=")[0] and ":" in names[-1]:
            names[-1] += f",{item}"
        else:
            names.append(item)
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgekit", description="Quantize a causal LM, measure what it costs, ship "
                                                                 "it.")
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compare", help="measure quantization variants side by side")
    c.add_argument("--model", default="default", help='a named model ("default", "smollm2-135m", "gemma3-270m"), a '
                                                      'local model folder or a hub id')
    c.add_argument("--variants", type=_variant_list, default=None,
                   help="comma-separated variant names, options after a colon (`edgekit variants` lists them)")
    c.add_argument("--eval-text", default="eval", help="a corpus split (eval, eval_milton) or a text file")
    c.add_argument("--baseline", default="fp32",
                   help="the variant every other is measured against (bf16 for a 7B that cannot load in fp32)")
    c.add_argument("--context", type=int, default=256)
    c.add_argument("--stride", type=int, default=128)
    c.add_argument("--max-tokens", type=int, default=16384, help="evaluate the first N tokens (0: all)")
    c.add_argument("--new-tokens", type=int, default=16, help="tokens generated per timed repetition")
    c.add_argument("--runs", type=int, default=5,
                   help="timed repetitions per variant, in interleaved rounds (the speed protocol)")
    c.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    c.add_argument("--store", type=Path, default=None, help="SQLite results file (default: "
                                                            "./edgekit-results/results.sqlite)")
    c.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    c.add_argument("--report", type=Path, default=None, help="write an HTML and Markdown report into this folder")
    c.add_argument("--device", default=None, help="add to the report the memory plan of each variant on this device "
                                                  "profile")
    c.add_argument("--plan-for", default=None, help="model config the report's memory plan is for (default: the "
                                                    "compared model)")
    c.add_argument("--resume", action="store_true",
                   help="skip variants the store already holds for the same weights, text and settings")
    c.add_argument("--tasks", type=_name_list, default=None,
                   help="comma-separated lm-eval tasks every variant answers, paired against the baseline "
                        "(offline: edgekit_lastword, edgekit_nextline)")
    c.add_argument("--task-limit", type=int, default=None, help="score the first N items of each task (default: all)")

    w = sub.add_parser("sweep", help="models x variants x eval texts as Ray tasks, on this machine or a Ray cluster")
    w.add_argument("--models", type=_name_list, default=["default"],
                   help='comma-separated models: "default", local folders (on every node) or hub ids')
    w.add_argument("--variants", type=_variant_list, default=None,
                   help="comma-separated variant names, as for compare")
    w.add_argument("--baseline", default="fp32", help="the variant every other is measured against")
    w.add_argument("--eval-texts", type=_name_list, default=["eval"],
                   help="comma-separated corpus splits or text files (read here, on the driver)")
    w.add_argument("--context", type=int, default=256)
    w.add_argument("--stride", type=int, default=128)
    w.add_argument("--max-tokens", type=int, default=16384, help="evaluate the first N tokens (0: all)")
    w.add_argument("--new-tokens", type=int, default=16, help="tokens generated per timed repetition")
    w.add_argument("--runs", type=int, default=5, help="timed repetitions per variant")
    w.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    w.add_argument("--address", default=None,
                   help='join this Ray cluster ("auto", "ray://head:10001", "head:6379"); default: a local one')
    w.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local cluster (default: all)")
    w.add_argument("--cpus-per-cell", type=float, default=1.0, help="CPUs each cell's task reserves")
    w.add_argument("--max-retries", type=int, default=2, help="times Ray reruns a cell whose worker died")
    w.add_argument("--no-resume", action="store_true", help="measure again the cells the store already holds")
    w.add_argument("--store", type=Path, default=None, help="SQLite results file (default: "
                                                            "./edgekit-results/results.sqlite)")
    w.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    w.add_argument("--tasks", type=_name_list, default=None,
                   help="comma-separated lm-eval tasks every cell answers, paired against its model's baseline "
                        "(offline: edgekit_lastword, edgekit_nextline)")
    w.add_argument("--task-limit", type=int, default=None, help="score the first N items of each task (default: all)")

    p = sub.add_parser("plan", help="memory plan for a model config, variant, context and device")
    p.add_argument("--config", required=True, help="known model short name, config.json path, model folder or hub id")
    p.add_argument("--variant", default="fp16")
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="laptop-16gb", help="device profile name or JSON file")
    p.add_argument("--json", type=Path, default=None)

    e = sub.add_parser("export", help="export, quantize and compile a variant into a verifiable artifact")
    e.add_argument("--model", default="default")
    e.add_argument("--variant", required=True, help="onnx-fp32, onnx-int8, onnx-int4-g32, gguf-q4_0, ov-int4-g128...")
    e.add_argument("--out", type=Path, required=True)

    v = sub.add_parser("verify", help="check an artifact's files, schema and runtime compatibility")
    v.add_argument("artifact", type=Path)
    v.add_argument("--expect-checksum", default=None, help="refuse unless the artifact's checksum is this one")

    r = sub.add_parser("run", help="generate text with an artifact")
    r.add_argument("artifact", type=Path)
    r.add_argument("--expect-checksum", default=None, help="refuse unless the artifact's checksum is this one")
    r.add_argument("--prompt", required=True)
    r.add_argument("--max-new-tokens", type=int, default=40)

    s = sub.add_parser("serve", help="serve a verified artifact over HTTP (OpenAI /v1 API, /health, /metrics)")
    s.add_argument("artifact", type=Path)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-batch", type=int, default=8, help="largest batch the dynamic batcher forms")
    s.add_argument("--max-wait-ms", type=float, default=10.0, help="longest a request waits for a batch to fill")
    s.add_argument("--max-queue", type=int, default=64, help="requests waiting or decoding at most; more get 429")
    s.add_argument("--timeout-s", type=float, default=60.0, help="a request's limit from arrival to last token (504)")
    s.add_argument("--device", default=None, help="device profile whose host memory budget readiness checks "
                                                  "(default: this machine)")
    s.add_argument("--expect-checksum", default=None, help="refuse to start unless the artifact's checksum (as "
                                                           "`edgekit verify` prints it) is this one")
    s.add_argument("--api-key", default=os.environ.get("EDGEKIT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $EDGEKIT_API_KEY; none: open)")
    s.add_argument("--allowed-hosts", nargs="*", default=None, help="Host names answered besides loopback ones and "
                                                                     "--host ('*': any)")
    s.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413 unread")

    dc = sub.add_parser("decide", help="recommend a variant and runtime from measured results, for a device and "
                                       "limits")
    dc.add_argument("--store", type=Path, default=None, help="SQLite results file (default: "
                                                             "./edgekit-results/results.sqlite)")
    dc.add_argument("--device", default="laptop-16gb", help="device profile name or JSON file")
    dc.add_argument("--max-kl", type=float, default=None, help="largest KL from the baseline (95%% upper bound)")
    dc.add_argument("--max-delta-ppl", type=float, default=None, help="largest perplexity change in %% (95%% upper "
                                                                      "bound)")
    dc.add_argument("--min-tokens-per-s", type=float, default=None, help="slowest acceptable decode speed")
    dc.add_argument("--max-p99-ms", type=float, default=None, help="largest acceptable P99 ms per token")
    dc.add_argument("--context", type=int, default=2048, help="context the memory plan is made for")
    dc.add_argument("--model", default=None, help="which model's rows, when the store holds several")
    dc.add_argument("--trust-contended", action="store_true",
                    help="let rows timed while other processes held their cores pass the speed limits")

    vs = sub.add_parser("variants", help="every variant: its runtime, what it is, the options it takes (with their "
                                         "defaults)")
    vs.add_argument("--family", default=None, help="only this runtime (pytorch, onnxruntime, openvino, llama.cpp)")

    cl = sub.add_parser("clean", help="remove the work caches (exports, artifacts, baselines, spills); results stay")
    cl.add_argument("--max-gb", type=float, default=None, help="keep the most recently used caches up to this size")
    i = sub.add_parser("inspect", help="which quantization grid each module group's weights already lie on")
    i.add_argument("model", help='a named model ("default", "smollm2-135m", "gemma3-270m") or a local model folder')
    i.add_argument("--json", type=Path, default=None, help="also write the groups as JSON here")

    d = sub.add_parser("doctor", help="what this machine can run: CPU features, runtimes' self-tests, GPU, memory")
    d.add_argument("--json", type=Path, default=None, help="also write the checks as JSON here")
    return parser


def run_compare(args) -> None:
    from edgekit.measure.quality import EvalSettings
    from edgekit.measure.store import ResultStore
    from edgekit.workflows.compare import (
        DEFAULT_VARIANTS,
        LatencySettings,
        compare,
        grid_lines,
        kl_flip_lines,
        results_json,
        summary_frame,
    )
    from edgekit.workflows.tasks import TaskRun, load_tasks

    settings = EvalSettings(context=args.context, stride=args.stride, max_tokens=args.max_tokens or None)
    tasks = TaskRun(tuple(args.tasks), args.task_limit) if args.tasks else None
    if tasks:
        load_tasks(list(tasks.names))  # an unknown task or unreachable data fails now, not in every row
    latency = None if args.no_latency else LatencySettings(new_tokens=args.new_tokens, runs=args.runs)
    store = ResultStore(args.store)
    if args.report and args.device:
        from edgekit.memory.profiles import load_profile

        load_profile(args.device)  # an unknown device fails now, not after the whole comparison

    def show(result) -> None:
        status = result.error or f"ppl {result.metrics['perplexity']:.3f}"
        print(f"  {result.variant}: {status}", file=sys.stderr, flush=True)

    from edgekit.measure.grids import baseline_grid_line, inspect_model
    from edgekit.models.load import refuse_remote_code, resolve_source

    if Path(resolve_source(args.model)).is_dir():  # a local checkpoint: which grid its weights already lie on
        refuse_remote_code(resolve_source(args.model))  # a folder that ships code is refused before anything reads it
        print(baseline_grid_line(inspect_model(args.model, sampled=True)), file=sys.stderr, flush=True)
    results = compare(args.model, args.variants or DEFAULT_VARIANTS, args.eval_text, settings, latency,
                      baseline=args.baseline, store=store, on_result=show, resume=args.resume, tasks=tasks)
    print_comparison(summary_frame(results))
    for line in kl_flip_lines(results) if tasks else []:
        print(line)
    for line in grid_lines(results):
        print(line, file=sys.stderr)
    print(f"results stored in {store.path} (run {results[0].run_id})", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results_json(results), indent=1))
    if args.report:
        from edgekit.ui.report import write_report

        report = write_report(results, args.report, device=args.device, plan_model=args.plan_for,
                              context=4096 if args.plan_for else None)
        print(f"report: {report}", file=sys.stderr)


QUALITY_COLUMNS = ("ppl", "Δppl %", "Δppl 95% CI", "Δppl reading", "KL", "KL ±se", "top-1", "top-1 ±se",
                   "weights MB", "bits/w", "emb bits/w", "baseline grid", "error")
SPEED_COLUMNS = ("peak RSS MB", "cold ms", "TTFT ms", "tok/s", "tok/s 95% CI", "× base [95% CI]", "p50 ms", "p95 ms",
                 "p99 ms", "withheld", "GB/s", "of peak", "bound", "contended")


def print_comparison(frame) -> None:
    """The comparison as a reader takes it in: quality, then speed and memory, then tasks, each a table of its own
    (the variant first in each), numbers at 3 significant figures and sizes at 2 decimals (``--json`` keeps
    every digit)."""
    from edgekit.core.numbers import sig

    def cell(column, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "-" if value is None else str(value)
        if value != value:
            return "-"
        return f"{value:,.2f}" if column.endswith("MB") else sig(value)

    speed = [c for c in SPEED_COLUMNS if c in frame]
    tasks = [c for c in frame.columns if c not in QUALITY_COLUMNS + SPEED_COLUMNS + ("variant",)]
    with _pandas_wide():
        for title, columns in (("quality", [c for c in QUALITY_COLUMNS if c in frame]), ("speed and memory", speed),
                               ("tasks", tasks)):
            if columns:
                part = frame[["variant", *columns]].copy()
                for column in columns:
                    part[column] = [cell(column, v) for v in part[column]]
                print(f"\n{title}:\n{part.to_string(index=False)}")


def run_sweep(args) -> None:
    from edgekit.measure.quality import EvalSettings
    from edgekit.measure.store import ResultStore
    from edgekit.workflows.compare import DEFAULT_VARIANTS, LatencySettings, kl_flip_lines, results_json, summary_frame
    from edgekit.workflows.sweep import run_sweep as sweep
    from edgekit.workflows.tasks import TaskRun, load_tasks

    settings = EvalSettings(context=args.context, stride=args.stride, max_tokens=args.max_tokens or None)
    latency = None if args.no_latency else LatencySettings(new_tokens=args.new_tokens, runs=args.runs)
    tasks = TaskRun(tuple(args.tasks), args.task_limit) if args.tasks else None
    if tasks:
        load_tasks(list(tasks.names))  # an unknown task or unreachable data fails now, not in every cell
    store = ResultStore(args.store)
    results = sweep(args.models, args.variants or DEFAULT_VARIANTS, args.eval_texts, settings, latency,
                    baseline=args.baseline, store=store, address=args.address, num_cpus=args.num_cpus,
                    cpus_per_cell=args.cpus_per_cell,
                    max_retries=args.max_retries, resume=not args.no_resume, tasks=tasks)
    with _pandas_wide():
        for (model, text) in dict.fromkeys((r.model, r.settings.get("eval_text")) for r in results):
            print(f"{model} on {text}:")
            same = [r for r in results if r.model == model and r.settings.get("eval_text") == text]
            print(summary_frame(same).to_string(index=False, float_format=lambda x: f"{x:.4g}"))
            for line in kl_flip_lines(same) if tasks else []:
                print(line)
    print(f"results stored in {store.path}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps([{"model": r.model, **row} for r, row in zip(results, results_json(results))],
                                        indent=1))


def run_plan(args) -> None:
    from edgekit.memory.plan import plan_memory

    plan = plan_memory(args.config, args.variant, context=args.context, batch=args.batch, device=args.device)
    print(plan.summary())
    if args.json:
        args.json.write_text(json.dumps(plan.to_dict(), indent=1))


def run_export(args) -> None:
    from edgekit.runtimes import export_artifact

    manifest = export_artifact(args.variant, args.model, args.out)
    print(f"wrote {args.variant} artifact to {manifest.path} ({len(manifest.data['files'])} files, "
          f"checksum {manifest.checksum})")


def run_verify(args) -> None:
    from edgekit.artifacts.manifest import read_manifest, verify_artifact
    from edgekit.runtimes import runtime_loader

    runtime = read_manifest(args.artifact).runtime
    max_opset = runtime_loader(runtime)[1]()
    manifest = verify_artifact(args.artifact, supported_opset=max_opset, expect_checksum=args.expect_checksum)
    print(f"ok: {manifest.variant} for {runtime}, {len(manifest.data['files'])} files intact, "
          f"checksum {manifest.checksum}")


def run_run(args) -> None:
    from edgekit.models.runner import generate_text
    from edgekit.runtimes import load_artifact

    runner = load_artifact(args.artifact, expect_checksum=args.expect_checksum)
    print(args.prompt + generate_text(runner, args.prompt, args.max_new_tokens))


def run_serve(args) -> None:
    from edgekit.serve.app import serve

    serve(args.artifact, host=args.host, port=args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
          max_queue=args.max_queue, timeout_s=args.timeout_s, device=args.device, expect_checksum=args.expect_checksum,
          api_key=args.api_key, allowed=args.allowed_hosts, max_body_bytes=args.max_body_bytes)


def run_clean(args) -> None:
    from edgekit.core.caches import clean

    removed = clean(None if args.max_gb is None else int(args.max_gb * 2**30))
    print(f"removed {len(removed)} cache entries ({sum(e.bytes for e in removed) / 2**30:.2f} GiB)")


def run_decide(args) -> int:
    from edgekit.measure.store import default_store_path
    from edgekit.workflows.decide import decide

    decision = decide(args.store or default_store_path(), args.device, max_kl=args.max_kl,
                      max_delta_ppl_pct=args.max_delta_ppl, min_tokens_per_s=args.min_tokens_per_s,
                      max_p99_ms=args.max_p99_ms, context=args.context, model=args.model,
                      trust_contended=args.trust_contended)
    print(decision.summary())
    return 0 if decision.recommended else 1


def run_variants(args) -> None:
    from edgekit.variants.registry import entries

    for entry in entries():
        if args.family in (None, entry.family):
            defaults = entry.default_options
            options = ", ".join(f"{o}={defaults[o]}" if o in defaults else o for o in entry.accepted_options) or "none"
            print(f"{', '.join(entry.examples):<48} {entry.family:<12} {entry.summary}  [options: {options}]")


def run_inspect(args) -> None:
    from edgekit.measure.grids import format_inspection, inspect_model

    groups = inspect_model(args.model)
    print(format_inspection(groups))
    if args.json:
        args.json.write_text(json.dumps([g.to_dict() for g in groups], indent=1))


def run_doctor(args) -> None:
    from dataclasses import asdict

    from edgekit.runtimes.doctor import run_checks

    checks = run_checks()
    for check in checks:
        print(check.line(), flush=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(c) for c in checks], indent=1))


class _pandas_wide:
    def __enter__(self):
        import pandas as pd

        self._ctx = pd.option_context("display.width", 250, "display.max_columns", 40)
        self._ctx.__enter__()

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


COMMANDS = {"compare": run_compare, "sweep": run_sweep, "plan": run_plan, "export": run_export, "verify": run_verify,
            "run": run_run, "serve": run_serve, "doctor": run_doctor, "clean": run_clean, "inspect": run_inspect,
            "variants": run_variants, "decide": run_decide}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = COMMANDS[args.command](args)  # None, or a command's own exit status (decide: 1 when nothing qualifies)
    except EdgekitError as exc:
        print(f"edgekit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgekit: interrupted; results measured so far are in the store", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
