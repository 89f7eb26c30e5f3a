"""Closing of notebook 05 (ONNX export and runtime): export parity, graph fusion, each ONNX variant's quality read
from its intervals, speed only from the speed protocol's resolved ratios, and what dynamic int8 does on a real LLM.

Figures (``closing(figures)``):

- ``n_past``: ``past_key_values.*`` inputs; ``max_diff``, ``parity_tokens``, ``parity_top1``: the fp32 export's
  parity against PyTorch; ``nodes_raw``, ``nodes_all``, ``fused``: graph nodes at levels ``disable`` and ``all``
  and the ops fusion wrote;
- ``model``, ``baseline``, ``tokens``, ``base_mb``: the model, the PyTorch baseline, scored tokens, its weight MB;
- ``rows``: ``{variant: {"mb", "kl", "kl_se", "delta_ci95", "speed_ratio_ci95", "speed_coverage", "contended"}}``
  for every ONNX variant measured;
- ``warned``: whether asking for a missing execution provider warned; ``ran_on``: the provider the session got;
- ``knob_runs``: timed runs per thread / I/O-binding setting.
"""
from __future__ import annotations

from edgekit.measure.stats import delta_reading
from edgekit.ui.lessons.compare_dashboard import interval, speed_word
from edgekit.ui.narrate import sig

DYNAMIC_INT8 = "onnx-int8"
REAL_MODEL = "smollm2-135m"


def quality_sentence(f: dict) -> str:
    parts = [f"`{n}` {r['mb']:.2f} MB, KL {sig(r['kl'])} ± {sig(r['kl_se'], 2)}, Δppl {interval(r['delta_ci95'])}% "
             f"({delta_reading(*r['delta_ci95'])})" for n, r in f["rows"].items()]
    return (f"In the comparison ({f['tokens']:,} tokens of the eval split, the same windows as `{f['baseline']}` "
            f"and its {f['base_mb']:.2f} MB of weights): " + "; ".join(parts) + ".")


def dynamic_int8_sentence(f: dict) -> str:
    row = f["rows"].get(DYNAMIC_INT8)
    if row is None:
        return ""
    reading = delta_reading(*row["delta_ci95"])
    here = {"worse": "costs perplexity beyond its interval", "better": "reads below the baseline beyond its interval",
            "within noise": "is within noise of the baseline", "no interval": "has no interval"}[reading]
    if f["model"] == REAL_MODEL:
        return f"On this model dynamic `{DYNAMIC_INT8}` {here}: it quantizes *activations*, per tensor, at every call."
    return (f"On `{f['model']}` dynamic `{DYNAMIC_INT8}` {here}; that is this model's figure, not a verdict on the "
            f"recipe: it quantizes *activations* per tensor, and on `{REAL_MODEL}` (section 4's note, measured with "
            "the command given there) activation outlier channels make it the costliest variant.")


def speed_sentence(f: dict) -> str:
    words = [f"`{n}` {speed_word(r)}" for n, r in f["rows"].items()]
    return (f"Decoding against PyTorch `{f['baseline']}`, from the speed protocol's paired ratio: " + "; ".join(words)
            + ". On a model this tiny per-call overhead weighs more than the kernels; compare kernels on a larger "
              "model with `benchmarks/bench_onnx.py`.")


def closing(figures: dict) -> str:
    f = figures
    fused = f["fused"] if f["fused"] not in ("-", "") else None
    fusion = (f"fusing chains of small ops into {fused}" if fused else "without writing any op the exporter had not")
    same = "fewer" if f["nodes_all"] < f["nodes_raw"] else ("as many" if f["nodes_all"] == f["nodes_raw"] else "more")
    return "\n".join(filter(None, [
        f"- The ONNX graph takes and returns the KV cache explicitly ({f['n_past']} `past_key_values.*` inputs, as "
        f"many `present.*` outputs); the fp32 export's largest |Δlogit| against PyTorch is {sig(f['max_diff'])} over "
        f"{f['parity_tokens']} tokens, the same next token at {f['parity_top1']:.1%} of them.",
        f"- Optimisation level `all` left {f['nodes_all']} nodes against {f['nodes_raw']} at `disable` ({same}), "
        f"{fusion}.",
        "- " + quality_sentence(f),
        "- " + dynamic_int8_sentence(f) if DYNAMIC_INT8 in f["rows"] else None,
        "- " + speed_sentence(f),
        f"- Asking for a missing execution provider gave {'a warning' if f['warned'] else 'no warning'} and a "
        f"session on `{f['ran_on']}`, not a failure. The thread and I/O-binding table is {f['knob_runs']} timed "
        "run(s) per setting without an interval: it shows the knobs, not a ranking (notebook 08 measures them "
        "with the speed protocol).",
    ]))


