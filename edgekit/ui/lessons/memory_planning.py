"""Notebook 02's closing: parameter counts, plans against a device, the guard, planned against built, and the 7B
record of notebook 12 read against the planner's own verdicts.

Figures: ``gqa`` (configs with fewer KV heads than query heads), ``big_vocab``, ``vocab``, ``embed_b`` (billions of
embedding + head parameters); ``device``, ``budget_gib``, ``plan_model``, ``context``, ``fit`` and ``no_fit``
(variants), ``fp32_compute`` (variants computing in fp32), ``kv_wide_gib``, ``kv_narrow_gib``; ``fp16_total_gib``,
``fp16_fits``, ``n_host``, ``n_disk`` (the offload map); ``variant``, ``fits_on``, ``n_devices``, ``npu``
({"fits", "total_gib", "budget_gib"}); ``model``, ``n_checked``, ``worst`` (largest planned/measured gap, a
fraction); ``refusal`` (the guard's message or None), ``same_logits``; ``seven_b_device`` and ``seven_b`` (rows of
the 7B record: ``variant``, ``fits`` (the planner's verdict on that device), ``planned_peak_bytes``,
``measured_peak_bytes``).
"""
from __future__ import annotations

from edgekit.ui.narrate import choose, gib, listing


def _names(variants) -> str:
    return listing([f"`{v}`" for v in variants])


def closing(figures: dict) -> str:
    f = figures
    npu = f["npu"]
    if npu["fits"]:
        npu_sentence = f"the NPU profile admits it ({npu['total_gib']:.2f} of {npu['budget_gib']:.2f} GiB)"
    elif npu["total_gib"] <= npu["budget_gib"]:
        npu_sentence = (f"the NPU profile refuses it although its {npu['total_gib']:.2f} GiB are under its "
                        f"{npu['budget_gib']:.2f} GiB: that NPU runs only integer-quantized exported graphs")
    else:
        npu_sentence = f"the NPU profile has {npu['budget_gib']:.2f} GiB for its {npu['total_gib']:.2f} GiB"
    fp16 = choose(f["fp16_fits"], f"fits ({f['fp16_total_gib']:.2f} GiB)",
                  f"does not fit ({f['fp16_total_gib']:.2f} GiB): its verdict names what would, and it carries an "
                  f"offload map of {f['n_host']} modules in host memory and {f['n_disk']} on disk")
    guard = choose(f["refusal"] is not None,
                   f"refused the load that could not fit before reading a weight (\"{(f['refusal'] or '')[:90]}...\")",
                   "did NOT refuse the oversized load")
    rows = f["seven_b"]
    admitted = [r["variant"] for r in rows if r["fits"]]
    refused = [r["variant"] for r in rows if not r["fits"]]
    within = [r["variant"] for r in rows if r["measured_peak_bytes"] <= r["planned_peak_bytes"]]
    above = [f"`{r['variant']}` ({gib(r['measured_peak_bytes'])} against {gib(r['planned_peak_bytes'])} planned)"
             for r in rows if r["measured_peak_bytes"] > r["planned_peak_bytes"]]
    return f"""
- Parameter counts come from the configs alone, exactly: {_names(f['gqa'])} keep fewer KV heads than query heads
  (grouped-query attention: a smaller KV cache), and `{f['big_vocab']}`'s {f['vocab']:,}-token vocabulary alone puts
  {f['embed_b']:.2f}B parameters in its embeddings and head.
- On `{f['device']}` ({f['budget_gib']:.2f} GiB usable) for `{f['plan_model']}` at context {f['context']}:
  {_names(f['fit'])} fit; {_names(f['no_fit'])} do not. {_names(f['fp32_compute']) or 'No variant'} compute in
  fp32, so their KV cache is {f['kv_wide_gib']:.2f} GiB against {f['kv_narrow_gib']:.2f} GiB for 16-bit compute.
- `fp16` {fp16}. Across devices `{f['variant']}` fits on {f['fits_on']} of {f['n_devices']} profiles;
  {npu_sentence}.
- Planned against built on `{f['model']}`: the largest gap over {f['n_checked']} variants is {f['worst']:.2%}.
- The guard {guard}; with `offload=true` the same load went through the plan's `device_map` and gave
  {choose(f['same_logits'], 'the same', 'different')} logits.
- **A 7B on `{f['seven_b_device']}`** (notebook 12's record: a Llama-2-7B-shaped checkpoint with random weights, so
  its quality figures say nothing about a trained 7B): the planner admits {_names(admitted)}
  {choose(bool(refused), 'and refuses ' + _names(refused), 'and refuses none of them')}. Measured peak within the
  planned peak: {_names(within)}; above it: {listing(above)}. Which admitted path decodes fastest is a speed
  question for the speed protocol's paired intervals (notebook 12), not for a memory plan.
"""
