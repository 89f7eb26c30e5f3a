"""Notebook 09 · Choosing a runtime: PyTorch, ONNX Runtime, OpenVINO, llama.cpp.

``figures``:

- ``baseline``: the PyTorch reference's name;
- ``rows``: ``{variant: {"kl", "kl_ci": [lo, hi], "top1", "delta_ci": [lo, hi] Δppl %, "weight_bytes",
  "ratio_ci": [lo, hi] decode rate over the baseline's (paired by round), "contended"}}`` for every measured
  variant but the baseline;
- ``head``: ``{"nbits": MatMulNBits nodes of onnx-int4-g32, "head": the head's node names ("" for none),
  "onnx_bytes", "pt_bytes"}``: onnx-int4-g32's and PyTorch int4-g32's weight bytes;
- ``threads``: ``{variant: {"ratio_ci": [lo, hi] of its decode rate with the second thread over with one,
  "contended"}}``;
- ``decision``: ``{"device", "max_kl", "min_tps", "recommended": (variant, runtime, weight_bytes) or None,
  "closest": (variant, its failures) or None, "failed", "candidates"}``.
"""
from __future__ import annotations

from edgekit.measure.stats import delta_reading
from edgekit.ui.narrate import apart, listing, mb, plural, ranking, sig, speed_reading

# Measured elsewhere and kept as the record (data/models/smollm2-135m/README.md, "Evaluation in edgekit").
SMOLLM2_ONNX_INT8 = ("on `smollm2-135m` the same dynamic `onnx-int8` costs +83.6% perplexity (KL 0.581 ± 0.026, "
                     "top-1 0.557): it quantizes the activations too, and SmolLM2 has activation outlier channels "
                     "(notebook 04; the record in `data/models/smollm2-135m/README.md`)")


def _quality(base: str, rows: dict) -> str:
    order = ranking({v: r["kl"] for v, r in rows.items()})
    low, high = order[0], order[-1]
    words = {1: "lies wholly above", -1: "lies wholly below", 0: "overlaps"}
    gap = words[apart(rows[high]["kl_ci"], rows[low]["kl_ci"])]
    readings = {v: delta_reading(*r["delta_ci"]) for v, r in rows.items()}
    counts = ", ".join(f"{plural(sum(x == word for x in readings.values()), 'variant')} {word}"
                       for word in ("worse", "within noise", "better") if word in readings.values())
    why = ("KL and top-1 separate what perplexity cannot" if "within noise" in readings.values()
           else "perplexity resolves every row here")
    return (f"Against the same `{base}` baseline on the same tokens, `{low}` has the lowest KL "
            f"({sig(rows[low]['kl'])}, top-1 {sig(rows[low]['top1'])}) and `{high}` the highest "
            f"({sig(rows[high]['kl'])}); the highest's interval {gap} the lowest's. By perplexity: {counts} — {why}.")


def _speed(base: str, rows: dict) -> str:
    groups = {}
    for variant, r in rows.items():
        groups.setdefault(speed_reading(r["ratio_ci"], r["contended"]), []).append(f"`{variant}`")
    parts = [f"{listing(names)}: {reading}" for reading, names in sorted(groups.items())]
    return f"Decode rate against `{base}`, paired by round: " + "; ".join(parts) + "."


def _threads(threads: dict) -> str:
    parts = [f"`{v}` with a second thread: {speed_reading(t['ratio_ci'], t['contended'])} "
             f"(ratio [{sig(t['ratio_ci'][0])}, {sig(t['ratio_ci'][1])}])" if t["ratio_ci"] else
             f"`{v}` without a ratio interval" for v, t in threads.items()]
    return "The thread sweep, read from its intervals: " + "; ".join(parts) + "."


def _decision(d: dict, rows: dict) -> str:
    limits = (f"For `{d['device']}` with KL at most {d['max_kl']} (upper bound) and at least {sig(d['min_tps'])} "
              f"tokens/s")
    if d["recommended"]:
        variant, runtime, size = d["recommended"]
        text = (f"{limits} (the lower bound of its speed interval, contended rows excluded), the decision is "
                f"`{variant}` on {runtime} ({mb(size)}, the fewest bytes of those that pass)")
    elif d["closest"]:
        text = f"{limits}, nothing qualifies; `{d['closest'][0]}` comes closest ({d['closest'][1]})"
    else:
        text = f"{limits}, nothing qualifies"
    text += f"; {d['failed']} of {d['candidates']} measured variants miss at least one limit."
    chosen = d["recommended"][0] if d["recommended"] else None
    if chosen == "onnx-int8" or "onnx-int8" in rows:
        text += (f" `onnx-int8` {'wins here' if chosen == 'onnx-int8' else 'was measured here'} on the toy model, "
                 f"but {SMOLLM2_ONNX_INT8}: a decision holds for the model it was measured on.")
    return text


def closing(figures: dict) -> str:
    rows, head = figures["rows"], figures["head"]
    heads = head["head"] or "none"
    return f"""
- {_quality(figures["baseline"], rows)}
- The ONNX int4 graph has {head["nbits"]} `MatMulNBits` nodes, the head's among them ({heads}): onnx-int4-g32 holds
  {mb(head["onnx_bytes"])} of weights against {mb(head["pt_bytes"])} for PyTorch int4-g32, whose head stays fp32 —
  compare their KL knowing that one quantized the head and the other did not.
- {_speed(figures["baseline"], rows)}
- {_threads(figures["threads"])}
- {_decision(figures["decision"], rows)}
"""
