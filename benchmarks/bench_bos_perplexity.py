"""gemma3-270m's fp32 perplexity as edgekit scores it (BOS before every window) against an independent
plain-transformers computation, and what leaving BOS out costs.

The independent side loads the same folder with ``AutoModelForCausalLM`` alone and runs the Hugging Face
guide's loop ("Perplexity of fixed-length models") over the same token ids (the same tokenizer, whose own
encoding begins a text with ``<bos>``), the same windows (context 256, stride 128) and the same scored
tokens, with ``<bos>`` put before every window and its label masked. Printed: both perplexities and their
ratio (edgekit's done-when: within 0.5%), and the guide's loop without BOS (what edgekit scored before the
rule). ``--tokens`` sets how many eval tokens (default 512). Figures are printed, never asserted.
"""
from __future__ import annotations

import argparse
import math
import time

import torch
from transformers import AutoModelForCausalLM

from edgekit.core.paths import bos_token_id, eval_token_ids
from edgekit.measure.quality import EvalSettings, score
from edgekit.models.load import load_tokenizer, resolve_source
from edgekit.runtimes import build_runner

CONTEXT, STRIDE = 256, 128


def guide_perplexity(model, ids: torch.Tensor, bos: int | None) -> float:
    """The guide's loop, with ``bos`` (when given) before every window; the window's first token stays unscored."""
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), STRIDE):
        end = min(begin + CONTEXT, len(ids))
        inputs = ids[begin:end][None]
        labels = inputs.clone()
        labels[:, : inputs.shape[1] - (end - prev_end)] = -100
        labels[:, 0] = -100  # never a target: nothing before it in the window (BOS does not change that here)
        if bos is not None:
            inputs = torch.cat([torch.tensor([[bos]]), inputs], 1)
            labels = torch.cat([torch.tensor([[-100]]), labels], 1)
        with torch.inference_mode():
            loss = model(input_ids=inputs, labels=labels).loss
        scored = int((labels != -100).sum())
        nll, count, prev_end = nll + float(loss) * scored, count + scored, end
        if end == len(ids):
            break
    return math.exp(nll / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--tokens", type=int, default=512)
    args = parser.parse_args()
    source = resolve_source(args.model)
    tokenizer = load_tokenizer(args.model)
    bos = bos_token_id(tokenizer)
    ids = eval_token_ids(tokenizer, "eval")[: args.tokens]
    start = time.perf_counter()
    runner = build_runner("fp32", source, tokenizer)
    ours = score(runner, ids, EvalSettings(context=CONTEXT, stride=STRIDE, max_tokens=args.tokens),
                 progress=False).perplexity()["perplexity"]
    runner.close()
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    theirs = guide_perplexity(model, ids, bos)
    without = guide_perplexity(model, ids, None)
    print(f"{args.model}: {len(ids)} eval tokens, context {CONTEXT}, stride {STRIDE}, BOS rule {bos}")
    print(f"edgekit fp32 perplexity (BOS before every window)  {ours:.4f}")
    print(f"plain transformers, same windows and BOS           {theirs:.4f}  (edgekit / it: {ours / theirs:.5f})")
    print(f"plain transformers, no BOS (edgekit before the rule) {without:.4f}")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
