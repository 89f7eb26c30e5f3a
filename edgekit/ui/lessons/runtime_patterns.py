"""Notebook 08 · Runtime patterns: tuning, batching, layer streaming, serving.

``figures``:

- ``onnx``, ``torch``: a tuning sweep each, ``{"n": candidates, "best": label ranked first, "default": the
  default's label, "best_rate": [lo, hi] and "default_rate": [lo, hi] decode tokens/s, "ratio": [lo, hi] of the
  best's rate over the default's, "contended": bool}``; ``onnx`` also ``"written"``, the runtime settings the
  manifest now holds;
- ``batch``: ``{"new_tokens", "sizes": [{"batch_size", "latency_ci": [lo, hi] ms of the median}], "target_ms",
  "target_basis", "max_wait_ms", "cap", "rate", "requests", "alone": {"missed", "p95"}, "batched": {"missed", "p95",
  "mean_batch"}}`` (``alone``: one request at a time; ``batched``: the dynamic batcher up to ``cap``);
- ``streaming``: ``{"layers_streamed", "layers", "same": bool, "stall_off", "stall_on" (median stall fractions),
  "rate_off", "rate_on": decode tokens/s of each round without and with prefetch}`` (the ratio with over without,
  paired by round, is read from the median's 95% interval);
- ``serving``: ``{"pieces", "add_up": bool, "refused_status", "target_ms", "target_basis", "single_rate",
  "sustained", "first_missed" (req/s or None), "rejected", "timed_out"}``.
"""
from __future__ import annotations

from edgekit.measure.speed import median_interval
from edgekit.ui.narrate import apart, reads, sig, speed_reading


def interval(pair, unit: str = "") -> str:
    return f"[{sig(pair[0])}, {sig(pair[1])}]{unit}" if pair else "(no interval)"


def _tuning(name: str, sweep: dict, manifest: str = "") -> str:
    if sweep["best"] == sweep["default"]:
        verdict = "the default itself ranked first, so there is nothing to switch to"
    elif apart(sweep["best_rate"], sweep["default_rate"]) == 1 and not sweep["contended"]:
        verdict = f"its decode interval lies wholly above the default's, so it is the winner{manifest}"
    elif sweep["contended"]:
        verdict = "its repetitions ran contended, so it is named no winner and the default stays"
    else:
        verdict = "the two decode intervals overlap, so it is no winner: the default stays"
    reading = speed_reading(sweep["ratio"], sweep["contended"])
    return (f"of {sweep['n']} {name} settings `{sweep['best']}` ranked first by its median per-token gap, at "
            f"{interval(sweep['best_rate'], ' tok/s')} against the default `{sweep['default']}` at "
            f"{interval(sweep['default_rate'], ' tok/s')} (ratio {interval(sweep['ratio'])}: {reading}); {verdict}")


def _within(missed: int, requests: int) -> str:
    return "kept" if missed <= requests / 10 else "did not keep"


def closing(figures: dict) -> str:
    onnx, torch, batch = figures["onnx"], figures["torch"], figures["batch"]
    stream, serve = figures["streaming"], figures["serving"]
    sizes = {row["batch_size"]: row for row in batch["sizes"]}
    n = batch["new_tokens"]

    def throughput(b):  # tokens/s interval from the median latency's interval: b requests of n tokens per run
        lo, hi = sizes[b]["latency_ci"] or (None, None)
        return None if lo is None else [b * n * 1000 / hi, b * n * 1000 / lo]

    first, cap = min(sizes), batch["cap"]
    gain = {1: "more", -1: "less", 0: "no resolved difference in"}[apart(throughput(cap), throughput(first))]
    alone, batched, requests = batch["alone"], batch["batched"], batch["requests"]
    _, low, high, _ = median_interval([on / off for on, off in zip(stream["rate_on"], stream["rate_off"])])
    ratio = None if low is None else [low, high]
    prefetch = reads(ratio, "faster with prefetch: the side thread took reading off the critical path",
                     "slower with prefetch: layers in the page cache make a read mostly a copy, and the side "
                     "thread competes with the compute for the same cores",
                     "neither faster nor slower with prefetch (no resolved difference)", value=1.0)
    if serve["sustained"]:
        knee = (f"every request was answered within {sig(serve['target_ms'])} ms (judged on the "
                f"{serve['target_basis']}) up to {sig(serve['sustained'])} req/s "
                f"({sig(serve['sustained'] / serve['single_rate'])}x the single stream)")
    else:
        knee = f"no rate tried stayed within {sig(serve['target_ms'])} ms (judged on the {serve['target_basis']})"
    knee += (f"; the first rate that missed was {sig(serve['first_missed'])} req/s" if serve["first_missed"]
             else "; no rate tried missed it")
    return f"""
- **Tuning:** {_tuning("ONNX Runtime", onnx, ", and the manifest now holds " + onnx["written"])}. In PyTorch,
  {_tuning("PyTorch", torch)}.
- **Batching:** the latency target of {sig(batch["target_ms"])} ms (judged on the {batch["target_basis"]} of each
  batch size's runs, after a {batch["max_wait_ms"]:g} ms wait for companions) allowed batch {cap}; its
  throughput, {interval(throughput(cap), " tok/s")} from the median's interval, shows {gain} throughput than batch
  {first} at {interval(throughput(first), " tok/s")}. Under seeded open-loop Poisson arrivals at
  {sig(batch["rate"])} requests/s, one request at a time missed the target for {alone["missed"]} of {requests}
  requests (P95 {sig(alone["p95"])} ms) and {_within(alone["missed"], requests)} nine in ten within it; the
  dynamic batcher (mean batch {sig(batched["mean_batch"])}) missed it for {batched["missed"]} (P95
  {sig(batched["p95"])} ms) and {_within(batched["missed"], requests)} nine in ten within it.
- **Layer streaming:** {stream["layers_streamed"]} of {stream["layers"]} layers streamed from disk gave
  {"the same" if stream["same"] else "different"} logits as the model in memory. The median stall was
  {stream["stall_off"]:.0%} of each token's time without prefetch and {stream["stall_on"]:.0%} with it; over
  {len(stream["rate_on"])} paired rounds decoding was {prefetch} (ratio {interval(ratio)}).
- **Serving:** the `openai` client completed, streamed ({serve["pieces"]} pieces that
  {"add up" if serve["add_up"] else "do NOT add up"} to the completion) and chatted unchanged, and an empty prompt
  got a {serve["refused_status"]} while the server kept going. Under load over HTTP, {knee};
  {serve["rejected"]} requests were refused with 429 and {serve["timed_out"]} timed out across the rates.
"""

