"""Can the speed figures be trusted? Three checks of the speed protocol (:mod:`edgekit.measure.speed`) on real
compares.

For fp32, int8, int4-g32, onnx-int4-g32 and gguf-q4_0 on the default model (``--variants`` to change):

(a) **repeatability**: two compares back to back; for every variant, do the two 95% intervals of its
    ratio to the baseline overlap? (They should, on a quiet machine: the same variant, the same machine.)
(b) **contention detected**: a third compare with a CPU hog (a busy loop in a child process pinned to
    one core with ``os.sched_setaffinity``) running from start to end: the share of the repetitions it
    overlapped (all of them) that were flagged contended. Target: at least 90%.
(c) **quiet not flagged**: the share of the repetitions of (a) flagged contended. Target: under 5%
    (on a quiet machine; a machine shared with other work is, correctly, contended).

Quality is scored on a short text (it is not what this checks). Run it alone on the machine:
``nice .venv/bin/python benchmarks/bench_speed_trust.py``; ``--runs 2 --variants fp32,int4-g32
--max-tokens 256`` for a smoke run. Figures are printed, never asserted.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's edgekit

from edgekit.core.numbers import sig  # noqa: E402
from edgekit.measure.quality import EvalSettings  # noqa: E402
from edgekit.measure.store import ResultStore  # noqa: E402
from edgekit.workflows.compare import LatencySettings, compare  # noqa: E402

VARIANTS = "fp32,int8,int4-g32,onnx-int4-g32,gguf-q4_0"
HOG = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


def run(args, store: ResultStore, label: str):
    results = compare(args.model, args.variants.split(","), settings=EvalSettings(context=128, stride=64,
                      max_tokens=args.max_tokens), latency=LatencySettings(new_tokens=args.new_tokens, runs=args.runs),
                      store=store, progress=False)
    failed = [f"{r.variant}: {r.error}" for r in results if r.status != "ok"]
    if failed:
        print(f"{label}: failed {failed}", file=sys.stderr)
    reps = store.repetitions(run_id=results[0].run_id)
    return {r.variant: r.metrics for r in results if r.status == "ok"}, reps


def _interval(metrics: dict) -> str:
    interval = metrics.get("speed_ratio_ci95")
    return "{:.2f} [{:.2f}, {:.2f}]".format(metrics["speed_ratio"], *interval) if interval else "-"


def flagged(reps: pd.DataFrame) -> str:
    known = reps["contended"].dropna()
    return f"{int(known.sum())}/{len(known)} = {known.mean():.0%}" if len(known) else "unclassified"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--variants", default=VARIANTS)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=512)
    args = parser.parse_args()
    store = ResultStore(Path(tempfile.mkdtemp(prefix="speed-trust-")) / "results.sqlite")
    first, reps1 = run(args, store, "compare 1")
    second, reps2 = run(args, store, "compare 2")
    core = max(os.sched_getaffinity(0))
    hog = subprocess.Popen([sys.executable, "-c", HOG, str(core)])
    try:
        hogged, reps3 = run(args, store, "compare 3 (hog)")
    finally:
        hog.kill()
        hog.wait()
    rows = []
    for variant in first:
        a, b, c = first[variant], second.get(variant, {}), hogged.get(variant, {})
        ia, ib = a.get("speed_ratio_ci95"), b.get("speed_ratio_ci95")
        rows.append({"variant": variant,
                     "tok/s 1": a.get("decode_tokens_per_s"), "tok/s 2": b.get("decode_tokens_per_s"),
                     "× base 1": _interval(a), "× base 2": _interval(b),
                     "overlap": None if not (ia and ib) else ia[0] <= ib[1] and ib[0] <= ia[1],
                     "contended quiet": f"{a.get('contended_repetitions')}+{b.get('contended_repetitions')}"
                                        f"/{a.get('repetitions', 0) + b.get('repetitions', 0)}",
                     "contended hog": f"{c.get('contended_repetitions')}/{c.get('repetitions')}",
                     "bound": a.get("bound"), "GB/s": a.get("bandwidth_gbps")})
    with pd.option_context("display.width", 220, "display.max_columns", 20):
        print(pd.DataFrame(rows).to_string(index=False, float_format=sig))
    quiet = pd.concat([reps1, reps2])
    print(f"(a) ratio intervals overlap for {sum(bool(r['overlap']) for r in rows)}/{len(rows)} variants")
    print(f"(b) hog on core {core}: repetitions flagged contended {flagged(reps3)} (target >= 90%)")
    print(f"(c) quiet: repetitions flagged contended {flagged(quiet)} (target < 5%)")


if __name__ == "__main__":
    main()
