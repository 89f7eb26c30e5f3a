"""Task scoring speed per runtime: items per second through the lm-eval backend, beside PyTorch fp32.

For each variant (PyTorch fp32 first, the baseline of the same run), build its Runner once
(:class:`edgekit.workflows.tasks.EdgekitLM`, through the registry and the load guard; an artifact is
exported first if the cache lacks it, outside the timing), then score the first ``--limit`` items of
a shipped task with lm-eval, twice in interleaved rounds, and keep each variant's faster round. It
prints items/s, the ratio to fp32 (the issue asks gguf/onnx/ov rows for at least 0.5) and the
accuracy, so a fast row that answers differently shows at once.

Run (on a quiet machine; on a shared one the figures are noise):
  python benchmarks/bench_tasks.py --model smollm2-135m --variants fp32,gguf-q4_0,onnx-int4-g32,ov-int4-g32
"""
from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--variants", default="fp32,onnx-int8,ov-int8,gguf-q8_0")
    parser.add_argument("--task", default="edgekit_nextline")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)

    from edgekit.workflows.tasks import EdgekitLM, evaluate_tasks

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    lms = {name: EdgekitLM(model=args.model, variant=name, batch_size=args.batch_size) for name in names}
    best = {name: float("inf") for name in names}
    accuracy = {}
    for _ in range(args.rounds):  # interleaved: a slow spell of the machine hits every variant alike
        for name, lm in lms.items():
            start = time.perf_counter()
            answers = evaluate_tasks(lm, [args.task], args.limit)[args.task]
            best[name] = min(best[name], time.perf_counter() - start)
            accuracy[name] = answers.accuracy
    base = args.limit / best[names[0]]
    print(f"{args.model} on {args.task}, first {args.limit} items, best of {args.rounds} rounds")
    print(f"{'variant':<18} {'items/s':>8} {'vs ' + names[0]:>10} {'accuracy':>9}")
    for name in names:
        rate = args.limit / best[name]
        print(f"{name:<18} {rate:8.2f} {rate / base:10.2f} {accuracy[name]:9.3f}")


if __name__ == "__main__":
    main()
