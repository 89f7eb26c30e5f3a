"""edgekit's packed int4-g32 decode against llama.cpp's Q4_0 token generation on the same model, with intervals.

The question of issue 28 item 7: on ``smollm2-135m`` (``--model``), does packed int4 decode at least
0.8x as fast as llama.cpp decodes the same model's Q4_0 GGUF (edgekit's ``gguf-q4_0`` artifact), on the
same threads? The row held to it is ``int4-g32:embed=8,compile=true``: 4-bit groups of 32 in the block
linears and 8-bit rows in the embedding/head table, as that file holds them, decoded on the fused
compiled step (:mod:`edgekit.quantizers.packed_decode`). Eager ``int4-g32`` (fp32 table, transformers'
forward) and PyTorch fp32 are timed beside them.

The llama.cpp figure: ``tools/build_llama_cpp.py`` builds llama-cpp-python, not the ``llama-bench``
binary, so llama.cpp is timed through llama-cpp-python's bindings: one ``llama_decode`` a token, fed its
own greedy choice, with ``logits_all`` off (what llama-bench's ``tg`` test does, plus one Python call
a token; edgekit's own ``gguf-q4_0`` runner keeps every position's logits for perplexity, so it is not
used here). All three are timed by the speed protocol (:mod:`edgekit.measure.speed`): interleaved rounds in a
seeded shuffled order, medians with 95% intervals, ratios paired by round, each repetition classified
quiet or contended. Run it alone: ``nice .venv/bin/python benchmarks/bench_vs_llama_cpp.py``
(``--runs 2 --new-tokens 16`` for a smoke run). Figures are printed, never asserted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's edgekit

from edgekit.core.paths import eval_token_ids  # noqa: E402
from edgekit.measure.speed import measure_speed, median_interval, paired_ratios, speed_figures  # noqa: E402
from edgekit.models.load import load_tokenizer, resolve_source  # noqa: E402
from edgekit.runtimes import (
    build_runner,  # noqa: E402
    cached_artifact,  # noqa: E402
)
from edgekit.runtimes.llama_cpp import MODEL_FILE  # noqa: E402
from edgekit.variants.registry import Variant  # noqa: E402

TARGET = 0.8
# packed int4-g32 as llama.cpp's Q4_0 file holds the model: block linears in 4-bit groups of 32, the tied
# embedding/head table as 8-bit rows (Q8_0 there), decoded on the fused, compiled step
PACKED = "int4-g32:embed=8,compile=true"


class LlamaTokenGeneration:
    """llama.cpp's token generation through llama-cpp-python, one decode a token, logits of the last only."""

    def __init__(self, path, threads: int) -> None:
        from llama_cpp import Llama

        self.name, self.tokenizer = "llama.cpp Q4_0 tg", None
        self.llm = Llama(str(path), n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads,
                         logits_all=False, verbose=False)

    def generate_stream(self, input_ids: torch.Tensor, max_new_tokens: int):
        import llama_cpp

        vocab = self.llm.n_vocab()
        self.llm.reset()
        tokens = input_ids.reshape(-1).tolist()
        for _ in range(max_new_tokens):
            self.llm.eval(tokens)
            token = int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.llm.ctx, -1),
                                              shape=(vocab,)).argmax())
            yield token
            tokens = [token]

    def close(self) -> None:
        self.llm.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    args = parser.parse_args()
    source = resolve_source(args.model)
    tokenizer = load_tokenizer(args.model)
    prompt = eval_token_ids(tokenizer, "eval")[: args.prompt_tokens]
    threads = torch.get_num_threads()
    gguf = cached_artifact(Variant.parse("gguf-q4_0"), source) / MODEL_FILE
    runners = {"fp32": build_runner("fp32", source, tokenizer),
               "int4-g32": build_runner("int4-g32", source, tokenizer),
               PACKED: build_runner(PACKED, source, tokenizer),
               "llama.cpp Q4_0 tg": LlamaTokenGeneration(gguf, threads)}
    try:
        reps = measure_speed(runners, prompt, args.new_tokens, args.runs, progress=False)
    finally:
        for runner in runners.values():
            runner.close()
    print(f"{args.model}, {threads} threads, {args.runs} interleaved repetitions of {args.new_tokens} tokens")
    width = max(map(len, reps))
    for name, mine in reps.items():
        f = speed_figures(mine, reps["fp32"])
        print(f"  {name:{width}s} {f['decode_tokens_per_s']:8.1f} tok/s  "
              f"95% CI [{f['decode_tokens_per_s_ci95'][0]:.1f}, "
              f"{f['decode_tokens_per_s_ci95'][1]:.1f}]  x fp32 {f['speed_ratio']:.2f} "
              f"[{f['speed_ratio_ci95'][0]:.2f}, "
              f"{f['speed_ratio_ci95'][1]:.2f}]  contended {f['contended_repetitions']}/{f['repetitions']}")
    ratio, lo, hi, coverage = median_interval(paired_ratios(reps[PACKED], reps["llama.cpp Q4_0 tg"]))
    verdict = ("too few repetitions for a 95% interval" if coverage < 0.9 else "meets" if lo >= TARGET
               else "misses" if hi < TARGET else "cannot tell (interval spans it)")
    print(f"{PACKED} / llama.cpp Q4_0 tg: {ratio:.2f}x [{lo:.2f}, {hi:.2f}] ({coverage:.1%} interval), "
          f"target >= {TARGET}: {verdict}")


if __name__ == "__main__":
    main()
