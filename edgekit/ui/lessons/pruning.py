"""Notebook 10 · Pruning and distillation: the third lever, on the same Pareto front.

``figures``:

- ``p``: the unstructured sparsity compared (%);
- ``rows``: ``{short variant name: {"kl", "kl_ci": [lo, hi], "mb": weight MB, "ratio_ci": [lo, hi] decode rate
  over fp32's (paired by round; None for fp32), "contended"}}``, with ``fp32``, ``prune-wanda-{p}%``,
  ``prune-magnitude-{p}%``, ``prune-wanda-2of4``, ``prune-mlp-25%``, ``prune-heads-50%``, ``prune-depth-33%``,
  ``int4-g64``, ``int3-g64``, ``prune-mlp-25%+int4-g64`` and ``prune-mlp-25%+distill+int4-g64``;
- ``kv_mb``: ``{"fp32", "prune-heads-50%"}`` planned KV cache MB at 1,024 tokens;
- ``plan_error_pct``: the largest gap between planned and loaded weight bytes, in %;
- ``kl_per_minute``: KL won back per training minute by the distillation.
"""
from __future__ import annotations

from edgekit.ui.narrate import apart, listing, on_front, sig, speed_reading

STRUCTURED = ("prune-mlp-25%", "prune-heads-50%", "prune-depth-33%")


def kl_against(rows: dict, a: str, b: str) -> str:
    """How ``a``'s KL interval sits against ``b``'s, in words."""
    return {-1: f"lies wholly below `{b}`'s", 1: f"lies wholly above `{b}`'s",
            0: f"overlaps `{b}`'s: no resolved difference"}[apart(rows[a]["kl_ci"], rows[b]["kl_ci"])]


def _speed(rows: dict, name: str) -> str:
    r = rows[name]
    reading = speed_reading(r["ratio_ci"], r["contended"])
    shown = f" (ratio [{sig(r['ratio_ci'][0])}, {sig(r['ratio_ci'][1])}])" if r["ratio_ci"] else ""
    return f"{reading}{shown}"


def closing(figures: dict) -> str:
    rows, p = figures["rows"], figures["p"]
    wanda, magnitude, two_four = f"prune-wanda-{p}%", f"prune-magnitude-{p}%", "prune-wanda-2of4"
    kl = {name: sig(r["kl"]) for name, r in rows.items()}
    front = on_front({name: (r["mb"], r["kl"]) for name, r in rows.items()})
    pruned = [name for name in front if name.startswith("prune-")]
    structured = "; ".join(f"`{name}` {sig(rows[name]['mb'])} MB at KL {kl[name]}, decoding {_speed(rows, name)} "
                           f"against fp32" for name in STRUCTURED)
    why_wanda = (" (Wanda keeps small weights whose inputs are large)"
                 if apart(rows[wanda]["kl_ci"], rows[magnitude]["kl_ci"]) == -1 else "")
    why_two_four = (" (2:4 may not choose where in a row the zeros go)"
                    if apart(rows[two_four]["kl_ci"], rows[wanda]["kl_ci"]) == 1 else "")
    return f"""
- **Wanda against magnitude** at {p}%: KL {kl[wanda]} against {kl[magnitude]}; Wanda's interval
  {kl_against(rows, wanda, magnitude)}{why_wanda}. 2:4 cost KL {kl[two_four]}, and its interval
  {kl_against(rows, two_four, wanda)}{why_two_four}.
- **Unstructured zeros bought no bytes**: `{wanda}` holds {sig(rows[wanda]["mb"])} MB against fp32's
  {sig(rows["fp32"]["mb"])} MB, stored dense and multiplied by dense kernels; its decode rate against fp32:
  {_speed(rows, wanda)}.
- **Structured cuts hold smaller matrices**: {structured}. `prune-heads-50%` removed whole key/value groups: a
  planned KV cache of {sig(figures["kv_mb"]["prune-heads-50%"])} MB at 1,024 tokens against fp32's
  {sig(figures["kv_mb"]["fp32"])} MB. The planner priced every variant within {sig(figures["plan_error_pct"])}% of
  what loaded, from the original config alone.
- **Pruned + quantized vs quantized only**: `prune-mlp-25%+int4-g64` holds {sig(rows["prune-mlp-25%+int4-g64"]["mb"])}
  MB at KL {kl["prune-mlp-25%+int4-g64"]}, and its interval {kl_against(rows, "prune-mlp-25%+int4-g64", "int4-g64")}
  ({sig(rows["int4-g64"]["mb"])} MB, KL {kl["int4-g64"]}); `int3-g64` holds {sig(rows["int3-g64"]["mb"])} MB at KL
  {kl["int3-g64"]}. After distillation the pruned one reached KL {kl["prune-mlp-25%+distill+int4-g64"]}, whose
  interval {kl_against(rows, "prune-mlp-25%+distill+int4-g64", "prune-mlp-25%+int4-g64")}
  ({sig(figures["kl_per_minute"])} KL won back per training minute).
- **On the bytes Pareto front** (weight MB against KL): {listing(f"`{n}`" for n in front)};
  {f"pruning earns its place with {listing(f'`{n}`' for n in pruned)}" if pruned else
   "no pruned variant: on this model quantization alone was the better use of bytes"}.
"""
