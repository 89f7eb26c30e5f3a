"""Notebook 00's closing: the machine, the model's size, its greedy sample and its perplexity.

Figures: ``cpu``, ``cores``, ``torch`` (the machine); ``model``, ``params``, ``weight_bytes``, ``dtype``;
``share`` and ``share_7b`` (embeddings + head as a share of the parameters, here and in Llama-2-7B); ``prompt``,
``first_line`` (the greedy continuation's first line); ``ppl``, ``ppl_ci95``, ``tokens``, ``windows``,
``context``, ``stride`` and ``max_tokens`` (None: the whole eval split was scored).
"""
from __future__ import annotations

from edgekit.ui.narrate import choose, mb, sig


def closing(figures: dict) -> str:
    f = figures
    ratio = f["share"] / f["share_7b"]
    weight = choose(ratio >= 1, f"weighs {sig(ratio)}x as much here as in a 7B",
                    f"weighs {sig(1 / ratio)}x less here than in a 7B") if ratio != 1 else "weighs the same"
    scored = choose(f["max_tokens"] is None, "the whole eval split (Hamlet and The Tempest)",
                    f"the first {f['tokens']:,} scored tokens of the eval split (Hamlet and The Tempest)")
    card = choose(f["max_tokens"] is None,
                  "the model card (`data/models/tiny-shakespeare-llama/README.md`) reports the same figure, measured "
                  "by the same code and settings",
                  "the model card (`data/models/tiny-shakespeare-llama/README.md`) reports the whole split, so its "
                  "figure differs from this slice's: set `MAX_TOKENS = None` to reproduce it")
    lo, hi = f["ppl_ci95"]
    return f"""
- The machine: {f['cpu']}, {f['cores']} logical cores, torch {f['torch']}; edgekit records these facts with every
  result it stores.
- `{f['model']}` loaded exactly as plain `AutoModelForCausalLM.from_pretrained` would load it: {f['params']:,}
  parameters, {mb(f['weight_bytes'])} of {f['dtype']} weights. Its token embeddings and LM head are
  {f['share']:.0%} of its parameters; in Llama-2-7B they are {f['share_7b']:.1%}. What a scheme does to the
  embeddings and the head {weight}: a tiny model is not a small 7B when you quantize it.
- Its greedy continuation of "{f['prompt']}" begins "{f['first_line']}": greedy decoding is deterministic, so the
  same weights give this text on every run.
- Perplexity {sig(f['ppl'])} (95% interval [{sig(lo)}, {sig(hi)}]) over {scored}, {f['windows']} windows of
  {f['context']} tokens advancing by {f['stride']}; {card}. Another context, stride or slice of the text gives
  another perplexity: compare perplexities only under the same settings, as `edgekit compare` does.
"""
