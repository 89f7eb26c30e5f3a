"""Notebook 01's closing: what scope, bits and code book do to the rounding error, and how the teaching schemes
differ from the runnable variants of the same name family.

Figures: ``means`` ({teaching scheme label: mean relative error over the block linears}, the labels of
:data:`edgekit.quantizers.reference.TEACHING_SCHEMES`); ``bits`` ({label: bits per weight stored on the studied
layer}); ``hardest`` and ``hardest_error`` (the layer sym-int4-b32 fits worst); ``tensor_kind`` (the kind of layer
one scale per tensor fits worst); ``knob`` (the scheme the knobs ended on); ``runnable_bytes`` ({variant: weight
bytes the planner holds for the whole model}, with ``int4-g32``, ``int4-g128``, ``nf4`` and
``nf4:double_quant=true``).
"""
from __future__ import annotations

from edgekit.ui.narrate import choose, mb, sig, trend

SCOPES = ("sym-int4-tensor", "sym-int4-channel", "sym-int4-b128", "sym-int4-b32")


def _lower(a: float, b: float, lower: str, higher: str, same: str = "the same error as") -> str:
    return same if a == b else choose(a < b, lower, higher)


def closing(figures: dict) -> str:
    f = figures
    m, bits, rb = f["means"], f["bits"], f["runnable_bytes"]
    scope_trend = trend([m[s] for s in SCOPES])
    scope = {"falls": "each finer scope lowered it",
             "rises": "each finer scope raised it (the opposite of what scope usually buys: look at the table)",
             }.get(scope_trend, f"it did not fall with every finer scope ({scope_trend})")
    nf4_vs_sym = _lower(m["nf4-b64"], m["sym-int4-b32"], "below", "above")
    asym_vs_sym = _lower(m["asym-int4-b32"], m["sym-int4-b32"], "lowered", "did not lower", "left unchanged")
    nf4_vs_g32 = _lower(rb["nf4"], rb["int4-g32"], "fewer", "more", "as many")
    nf4_vs_g128 = _lower(rb["nf4"], rb["int4-g128"], "fewer", "more", "as many")
    dq_vs_nf4 = _lower(rb["nf4:double_quant=true"], rb["nf4"], "fewer", "more", "as many")
    return f"""
- **Scope.** Mean relative error over the model's linear layers with a symmetric 4-bit grid, from one scale per
  tensor to one per block of 32 columns: {sig(m['sym-int4-tensor'])}, {sig(m['sym-int4-channel'])},
  {sig(m['sym-int4-b128'])}, {sig(m['sym-int4-b32'])}: {scope}. The metadata costs
  {bits['sym-int4-b32'] - 4:.3f} bits per weight at blocks of 32.
- **Bits.** One scale per row: 8 bits {sig(m['sym-int8-channel'])} against 4 bits {sig(m['sym-int4-channel'])}.
- **Code book at equal bits.** `nf4-b64` ({bits['nf4-b64']:.3f} bits/weight) lands {nf4_vs_sym} `sym-int4-b32`
  ({bits['sym-int4-b32']:.3f} bits/weight) at {sig(m['nf4-b64'])} against {sig(m['sym-int4-b32'])}; a zero point
  (`asym-int4-b32`, {bits['asym-int4-b32']:.3f} bits/weight) {asym_vs_sym} the error ({sig(m['asym-int4-b32'])}).
- **Teaching schemes are not the runnable variants.** The schemes here are named apart: the runnable `int4-g32`
  is asymmetric with a bf16 scale and zero a group (5.0 bits per weight on its linears), nearer `asym-int4-b32`
  than `sym-int4-b32`, so rank it against nf4 from notebook 03's table, not from this one. For the whole model the
  planner holds {mb(rb['nf4'])} for `nf4` (an fp32 absmax per block of 64, no double quantization),
  {nf4_vs_g32} bytes than `int4-g32` ({mb(rb['int4-g32'])}) and {nf4_vs_g128} than `int4-g128` ({mb(rb['int4-g128'])});
  `nf4:double_quant=true` quantizes the absmax itself and holds {dq_vs_nf4} ({mb(rb['nf4:double_quant=true'])}).
  Compare nf4's bytes across notebooks only with the same options.
- **Weight error is not output sensitivity.** Under `sym-int4-b32` the layer with the largest weight error is
  `{f['hardest']}` ({sig(f['hardest_error'])}); with one scale per tensor the kind of layer hardest to fit is
  `{f['tensor_kind']}`. That ranks how well a grid fits a matrix, not how much the output cares: notebook 03
  measures the output (KL), and notebook 04 one layer at a time.
- The knobs ended on `{f['knob']}`; move them and the error follows.
"""
