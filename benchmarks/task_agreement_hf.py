"""edgekit's lm-eval model against lm-eval's own ``hf`` backend, item by item, on the shipped tasks.

Scores every item (or the first ``--limit``) of each task twice, with ``--model edgekit`` (the Runner of
``--variant``, fp32 by default) and with lm-eval's ``HFLM`` over the same checkpoint in fp32, and prints, per
task, the items compared, the items whose correctness differs and the largest difference of a request's
log-likelihood. The issue's check: on ``smollm2-135m`` fp32 no item differs. A quality check, not a timing:

  python benchmarks/task_agreement_hf.py --model smollm2-135m [--out answers.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM

from edgekit.models.load import resolve_source
from edgekit.workflows.tasks import EdgekitLM, load_tasks, shipped_tasks, task_manager


def per_item(results: dict) -> dict:
    """task -> doc id -> (acc, the log-likelihoods of its requests), from lm-eval's logged samples."""
    return {task: {s["doc_id"]: (bool(s["acc"]), [float(r[0][0]) for r in s["resps"]]) for s in samples}
            for task, samples in results["samples"].items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--variant", default="fp32")
    parser.add_argument("--tasks", default=",".join(shipped_tasks()))
    parser.add_argument("--limit", type=int, default=None, help="the first N items of each task (default: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None, help="write both backends' per-item answers here (JSON)")
    args = parser.parse_args(argv)

    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    ours = per_item(simple_evaluate(model=EdgekitLM(model=args.model, variant=args.variant,
                                                    batch_size=args.batch_size),
                                    tasks=load_tasks(names), limit=args.limit, bootstrap_iters=0,
                                    task_manager=task_manager(names), log_samples=True))
    hf = HFLM(pretrained=resolve_source(args.model), dtype="float32", batch_size=args.batch_size, device="cpu")
    theirs = per_item(simple_evaluate(model=hf, tasks=load_tasks(names), limit=args.limit, bootstrap_iters=0,
                                      task_manager=task_manager(names), log_samples=True))
    differing_total = 0
    print(f"{args.model}: edgekit {args.variant} vs lm-eval hf fp32")
    print(f"{'task':<20} {'compared':>9} {'differing':>10} {'acc edgekit':>12} {'acc hf':>7} {'max |Δ loglik|':>15}")
    for task in names:
        a, b = ours[task], theirs[task]
        if set(a) != set(b):
            raise SystemExit(f"{task}: the two backends scored different items ({len(a)} vs {len(b)})")
        differing = [d for d in a if a[d][0] != b[d][0]]
        gap = max(abs(x - y) for d in a for x, y in zip(a[d][1], b[d][1]))
        differing_total += len(differing)
        print(f"{task:<20} {len(a):>9} {len(differing):>10} {sum(v[0] for v in a.values()) / len(a):>12.4f} "
              f"{sum(v[0] for v in b.values()) / len(b):>7.4f} {gap:>15.2e}"
              + (f"  differing doc ids: {differing[:20]}" if differing else ""))
    if args.out:
        args.out.write_text(json.dumps({"edgekit": ours, "hf": theirs}))
    return 1 if differing_total else 0


if __name__ == "__main__":
    raise SystemExit(main())
