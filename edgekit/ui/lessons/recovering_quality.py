"""Closing of notebook 04 (recovering quality): sensitivity, the Pareto front of mixed precision, calibration and
QAT, each comparison read from the run's intervals.

Figures (``closing(figures)``):

- ``scheme``, ``eval_tokens``: the sensitivity scheme and the tokens the sweeps scored;
- ``top``, ``top_kl``, ``low``, ``low_kl``: the most and least sensitive layer and their KL;
  ``k_rank``, ``n_modules``: where ``self_attn.k_proj`` ranks among the module types;
- ``variants``: ``{name: {"mb", "kl", "kl_se"}}`` for every compared variant (not the baseline);
- ``pareto``: the names drawn on the KL-against-bytes figure (the Pareto front is taken among them);
- ``int2``, ``int8``, ``mixed`` (list), ``rtn``, ``gptq``, ``awq``, ``qat``: names of those rows in ``variants``;
- ``grid_aligned``: names whose scheme reproduces the baseline's own quantization grid (they understate their error);
- ``qat_start``, ``qat_end``: ``{"kl", "kl_se", "train_s"}`` at the first and last checkpoint of the QAT curve;
- ``outlier``, ``real_outlier``, ``real``: the largest attention-input channel over the median, here and on the
  real model named ``real``.

KL differences between two rows are read on ``a - b ± 1.96·hypot(se_a, se_b)`` (independent errors: cautious, as
both are scored on the same tokens), so a change is claimed only where that interval excludes zero.
"""
from __future__ import annotations

import math

from edgekit.measure.stats import Z95
from edgekit.ui.narrate import listing, on_front, reads, side, sig


def kl_difference(a: dict, b: dict) -> tuple[float, float]:
    """The 95% interval of ``a``'s KL minus ``b``'s, from their standard errors."""
    d, s = a["kl"] - b["kl"], math.hypot(a["kl_se"], b["kl_se"])
    return d - Z95 * s, d + Z95 * s


def dominator(name: str, points: dict) -> str | None:
    """A name whose point is no larger and no further from fp32 than ``name``'s, better in one."""
    size, loss = points[name]
    for other, (s, l) in points.items():
        if other != name and s <= size and l <= loss and (s < size or l < loss):
            return other
    return None


def kl(row: dict) -> str:
    return f"{sig(row['kl'])} ± {sig(row['kl_se'], 2)}"


def front_sentence(v: dict, names: list[str], mixed: list[str]) -> str:
    points = {n: (v[n]["mb"], v[n]["kl"]) for n in names}
    front = on_front(points)
    parts = ["**On the Pareto front** of KL against weight bytes (among the quantized variants drawn): "
             f"{listing(f'`{n}`' for n in front)}."]
    for m in mixed:
        if m in front:
            parts.append(f"`{m}` ({v[m]['mb']:.2f} MB, KL {sig(v[m]['kl'])}) is on it: no variant is both smaller "
                         "and closer to fp32.")
        else:
            d = dominator(m, points)
            parts.append(f"`{m}` ({v[m]['mb']:.2f} MB, KL {sig(v[m]['kl'])}) is off it: `{d}` is no larger "
                         f"({v[d]['mb']:.2f} MB) and closer to fp32 (KL {sig(v[d]['kl'])}).")
    return " ".join(parts)


def mixed_sentence(v: dict, int2: str, mixed: list[str]) -> str:
    phrases = []
    for m in mixed:
        phrases.append(f"`{m}` " + reads(kl_difference(v[m], v[int2]),
                                          above=f"ends further from fp32 than `{int2}` beyond both error bars",
                                          below=f"has a lower KL than `{int2}` beyond both error bars",
                                          within=f"is not resolved from `{int2}` (the KL intervals overlap)")
                       + f" ({kl(v[m])} against {kl(v[int2])})")
    return "Keeping the most sensitive layers at int8: " + "; ".join(phrases) + "."


def calibration_sentence(v: dict, rtn: str, others: list[str]) -> str:
    phrases = [f"`{o}` ({kl(v[o])}) " + reads(kl_difference(v[o], v[rtn]), above="lands further from fp32 than RTN",
                                               below="lands closer to fp32 than RTN",
                                               within="is not resolved from RTN")
               for o in others]
    return (f"**Calibration at equal bytes** ({v[rtn]['mb']:.2f} MB each): against RTN's KL {kl(v[rtn])}, "
            + "; ".join(phrases) + " (95% intervals of the difference).")


def outlier_sentence(f: dict) -> str:
    fewer = f["outlier"] < f["real_outlier"]
    return (f"AWQ scales the input channels the *activations* mark as salient; the largest attention-input channel is "
            f"{sig(f['outlier'])}x the median here against {sig(f['real_outlier'])}x in `{f['real']}` (section 5)"
            + (": this model has fewer outlier channels for it to protect." if fewer
               else ": this model has outlier channels as large as the real one's."))


def qat_sentence(f: dict) -> str:
    start, end, v = f["qat_start"], f["qat_end"], f["variants"]
    change = kl_difference(end, start)
    moved = side(change)
    curve = {-1: (f"**QAT** took the 2-bit KL from {kl(start)} to {kl(end)} "
                  f"({1 - end['kl'] / start['kl']:.0%} won back, beyond both error bars)"),
             1: f"**QAT** ended further from fp32 than it started: KL {kl(start)} -> {kl(end)}",
             0: (f"**QAT** moved the 2-bit KL from {kl(start)} to {kl(end)}, a change its error bars do not resolve "
                 "(the intervals overlap): no recovery is claimed from this run")}[moved]
    packed = reads(kl_difference(v[f["qat"]], v[f["int2"]]), above=f"further from fp32 than `{f['int2']}`",
                   below=f"closer to fp32 than `{f['int2']}`", within=f"not resolved from `{f['int2']}`")
    return (f"{curve} ({end['train_s']:.0f} s of training, on its {f['eval_tokens']}-token curve). Its packed row "
            f"in the table ({kl(v[f['qat']])}) is {packed}. Longer runs (`benchmarks/bench_recovering_quality.py`) "
            "are how to find out whether more training helps.")


def grid_sentence(aligned: list[str]) -> str:
    if not aligned:
        return ("No compared variant reproduces the baseline's own quantization grid, so every KL here is "
                "measured against weights the scheme did not come from.")
    return (f"{listing(f'`{n}`' for n in aligned)} reproduce the baseline's own quantization grid (the table's "
            "`baseline grid`): their KL understates what the scheme costs a model that was never quantized.")


def closing(figures: dict) -> str:
    f, v = figures, figures["variants"]
    return "\n".join([
        f"- **Sensitivity is uneven.** Quantizing one linear layer alone to {f['scheme']} costs from "
        f"{sig(f['top_kl'])} (`{f['top']}`) down to {sig(f['low_kl'])} (`{f['low']}`) nats of KL on "
        f"{f['eval_tokens']} tokens; by module, `k_proj` ranks {f['k_rank']} of {f['n_modules']}. Notebook 01 ranks "
        "layers by how well a grid fits their weights; this ranks them by what the output cares about.",
        "- " + front_sentence(v, [n for n in f["pareto"] if n in v], f["mixed"]),
        "- " + mixed_sentence(v, f["int2"], f["mixed"]),
        "- " + calibration_sentence(v, f["rtn"], [f["gptq"], f["awq"]]) + " " + outlier_sentence(f),
        "- " + qat_sentence(f),
        "- " + grid_sentence(f.get("grid_aligned") or []),
    ])
