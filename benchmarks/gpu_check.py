"""One prepared check that every PyTorch variant family runs on a device and is measured right.

Run on a GPU machine (sized for under 6 minutes on one H100, the 7B-shaped checkpoint written
there included), or here with ``--device cpu`` on small models:

  python benchmarks/gpu_check.py                                  # cuda: default model + 7B-shaped bf16
  python benchmarks/gpu_check.py --device cpu --big-preset 214m   # the same code paths on a CPU

For each variant it prints one row: its error, or which path its linear layers multiply on,
planned vs measured weight bytes, the peak during the load alone and against the plan (quantized
loads stream tensor by tensor: within 1.15x), the peak over load and scoring (CUDA max allocated,
or RSS on a CPU), KL and top-1 agreement against the first row on a short eval text, and the
steady decode tokens/s with the achieved bandwidth (weight bytes x tokens/s) and its fraction
of the device's copy bandwidth (:func:`edgekit.measure.latency.measure_latency`); ``:compile=true`` rows
decode on a static KV cache with a compiled step, as gpt-fast does. Then: the int4 kernel
against the dequantize path on one model (logits, bytes, speed), a ragged layer (576 columns,
groups of 128) on the kernel, and layer streaming. Figures are printed, never asserted.

The compiled section (``--speed-variants``, on the big checkpoint) follows the speed protocol of
:mod:`edgekit.measure.speed`: every variant loaded at once, warmed up, then timed in interleaved
rounds (order shuffled per round); median decode tok/s with its 95% interval, each variant's
ratio to the first with an interval paired by round, and the roofline columns of
:mod:`edgekit.measure.roofline` against the device's copy bandwidth and its measured bf16 matrix
rate. The issue's targets for the 7B shape are printed beside them: ``fp16:compile=true`` at
>= 0.75 of copy bandwidth, packed ``int4-g128:compile=true`` (bf16 rest) at >= 1.8x it. A
profile of a few compiled decode steps lists where each one's time goes on the device.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from functools import lru_cache
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_random_checkpoint import PRESETS, write_checkpoint  # noqa: E402

from edgekit.core.paths import data_dir, eval_token_ids  # noqa: E402
from edgekit.measure import roofline, speed  # noqa: E402
from edgekit.measure.latency import device_bandwidth, measure_latency  # noqa: E402
from edgekit.measure.peak_memory import PeakMemory, release_memory  # noqa: E402
from edgekit.measure.quality import EvalSettings, score  # noqa: E402
from edgekit.memory.bytes import kv_cache_bytes, kv_cache_dtype  # noqa: E402
from edgekit.memory.bytes import weight_bytes as planned_bytes  # noqa: E402
from edgekit.models.config import parameter_count  # noqa: E402
from edgekit.models.load import load_model, load_tokenizer, model_config, resolve_source  # noqa: E402
from edgekit.models.runner import TorchRunner  # noqa: E402
from edgekit.quantizers.packed import PackedLinear, compute_paths, quantize_rtn  # noqa: E402
from edgekit.runtimes import build_runner  # noqa: E402

SMALL_VARIANTS = ("fp32,fp16,bf16,int8,nf4,fp4,int4-g32,int4-g128,int3-g128,int2-g64,gptq-int4-g128,"
                  "awq-int4-g128,mixed-int4-g128-k4,qat-int2-g64:steps=8")
BIG_VARIANTS = "fp16,nf4,int8,int4-g128,int4-g32"
SPEED_VARIANTS = "fp16:compile=true,int4-g128:compile=true"
COPY_TARGET, INT4_TARGET = 0.75, 1.8  # issue 28's targets for the 7B shape
COLUMNS = ("variant", "path", "plan MB", "held MB", "held/plan", "load peak MB", "load peak/plan", "peak MB", "KL",
           "top-1", "tok/s", "GB/s", "of copy", "bound", "warm-ups", "load s")


def with_device(variant: str, device: str) -> str:
    name, _, options = variant.partition(":")
    return f"{name}:{options + ',' if options else ''}device={device}"


def measure_row(variant: str, source: str, tokenizer, ids, settings, prompt, device, base, new_tokens, runs):
    """Build, score and time one variant; returns (row, scores)."""
    release_memory()
    row = {"variant": variant}
    key = "peak_cuda_allocated_bytes" if device == "cuda" else "peak_rss_bytes"
    with PeakMemory() as peak:
        with PeakMemory() as load_peak:
            start = time.perf_counter()
            runner = build_runner(with_device(variant, device), source, tokenizer)
            row["load s"] = time.perf_counter() - start
        row["load peak MB"] = load_peak.result[key] / 1e6
        try:
            scores = score(runner, ids, settings, baseline=base, keep_logprobs=base is None, progress=False)
            lat = measure_latency(runner, prompt, new_tokens, runs, progress=False)
            held = runner.weight_bytes()
            row.update(path=lat.get("compute_path", "-"), **{"held MB": held / 1e6})
        finally:
            runner.close()
            del runner
    try:
        plan = planned_bytes(source, variant)
        row.update({"plan MB": plan / 1e6, "held/plan": held / plan,
                    "load peak/plan": row["load peak MB"] * 1e6 / plan})
    except Exception as exc:  # a variant the planner cannot price is a finding, not a crash
        row["plan MB"] = f"not planned: {exc}"
    row["peak MB"] = peak.result[key] / 1e6
    if base is not None:
        quality = scores.against(base)
        row.update({"KL": quality["kl_divergence"], "top-1": quality["top1_agreement"]})
    config = model_config(source)
    kv = kv_cache_bytes(config, int(prompt.numel()) + new_tokens // 2,
                        dtype=kv_cache_dtype(config, with_device(variant, device)))
    figures = roofline.roofline_figures(held, kv, parameter_count(config), lat["decode_tokens_per_s"],
                                        device_bandwidth(device), matmul_rate(device))
    row.update({"tok/s": lat["decode_tokens_per_s"], "GB/s": figures["bandwidth_gbps"],
                "of copy": figures["bandwidth_fraction"], "bound": figures["bound"],
                "warm-ups": f"{lat['warmup_runs']}{'' if lat['steady'] else '!'}"})
    return row, scores


def print_row(row: dict) -> None:
    cells = []
    for key in COLUMNS:
        value = row.get(key, "")
        cells.append(f"{value:.4g}" if isinstance(value, float) else str(value))
    print(" | ".join(cells), flush=True)


def check_variants(title, source, variants, device, settings, new_tokens, runs) -> None:
    print(f"\n## {title}: {source} on {device}\n" + " | ".join(COLUMNS), flush=True)
    tokenizer = load_tokenizer(source)
    ids = eval_token_ids(tokenizer, "eval")
    prompt = ids[:32]
    base = None
    for variant in variants:
        try:
            row, scores = measure_row(variant, source, tokenizer, ids, settings, prompt, device, base, new_tokens,
                                      runs)
            base = base or scores
            print_row(row)
        except Exception as exc:
            print(f"{variant} | ERROR {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                  flush=True)
            traceback.print_exc(limit=3, file=sys.stdout)


@lru_cache(maxsize=None)
def matmul_rate(device: str, size: int = 8192) -> float:
    """FLOP/s of a ``size``-cubed bf16 matrix product on a GPU (the best of 5 after a warm-up); on a CPU, the
    float32 rate the roofline module measures."""
    if device != "cuda":
        return roofline.matmul_throughput()
    x = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    torch.mm(x, x)
    best = float("inf")
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.mm(x, x)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1000)
    return 2 * size ** 3 / best


def profile_steps(runner, prompt, tokens: int = 8, top: int = 8) -> None:
    """The device kernels that take a compiled decode's time, over ``tokens`` tokens (after its warm-up), and
    how much of the wall time the device was busy: the rest is gaps between kernels or host work."""
    from torch.profiler import DeviceType, ProfilerActivity, profile

    cuda = runner.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        list(runner.generate_stream(prompt, tokens))
    wall = time.perf_counter() - start
    events = prof.key_averages()
    print(f"### where {runner.name}'s {tokens} tokens go ({wall * 1000 / tokens:.2f} ms a token, profiled)",
          flush=True)
    if cuda:
        kernels = [e for e in events if e.device_type == DeviceType.CUDA]
        busy = sum(e.self_device_time_total for e in kernels) / 1e6
        print(f"device busy {busy * 1000 / tokens:.2f} ms a token ({busy / wall:.0%} of the wall time), "
              f"{sum(e.count for e in kernels) / tokens:.0f} kernels a token", flush=True)
    print(events.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=top,
                       max_name_column_width=70), flush=True)


def interval(value: float, low: float, high: float) -> str:
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


def target_reading(figure: tuple[float, float, float], target: float) -> str:
    """``value [low, high] -> meets | misses | undecided``: a target is met or missed only by the whole interval."""
    value, low, high = figure
    verdict = "meets" if low >= target else "misses" if high < target else "undecided"
    return f"{interval(value, low, high)} -> {verdict}"


def check_compiled_speed(source, variants, device, new_tokens, repetitions) -> None:
    """The compiled rows on the speed protocol: interleaved rounds, intervals, paired ratios, roofline, targets."""
    print(f"\n## compiled decoding, interleaved: {source} on {device}", flush=True)
    tokenizer = load_tokenizer(source)
    prompt = eval_token_ids(tokenizer, "eval")[:32].reshape(1, -1)
    runners, paths = {}, {}
    for variant in variants:
        start = time.perf_counter()
        runners[variant] = build_runner(with_device(variant, device), source, tokenizer)
        paths[variant] = getattr(runners[variant], "decode_path", None) or runners[variant].compute_path
        print(f"{variant}: loaded in {time.perf_counter() - start:.0f} s, {runners[variant].weight_bytes() / 1e9:.2f}"
              f" GB held; {paths[variant]}", flush=True)
    start = time.perf_counter()
    reps = speed.measure_speed(runners, prompt, new_tokens, repetitions, warmup=3, progress=False)
    print(f"warm-up (compilation, graph capture) and {repetitions} rounds: {time.perf_counter() - start:.0f} s",
          flush=True)
    copy, flops = device_bandwidth(device), matmul_rate(device)
    config = model_config(source)
    context = prompt.shape[1] + new_tokens // 2
    base = variants[0]
    print(f"copy bandwidth {copy / 1e9:.0f} GB/s, matrix rate {flops / 1e12:.1f} TFLOP/s; KV cache read at the mean "
          f"context of {context} tokens\nvariant | tok/s | tok/s 95% CI | x {base} [95% CI] | MB/token | GB/s "
          f"| of copy [95% CI] | bound | path", flush=True)
    copy_fraction, ratio = {}, {}  # variant -> (value, low, high)
    for variant, runner in runners.items():
        figures = speed.speed_figures(reps[variant], reps[base] if variant != base else None)
        low, high = figures["decode_tokens_per_s_ci95"]
        ratio[variant] = (figures.get("speed_ratio", 1.0), *(figures.get("speed_ratio_ci95") or [1.0, 1.0]))
        kv = kv_cache_bytes(config, context, dtype=kv_cache_dtype(config, with_device(variant, device)))
        row = roofline.roofline_figures(runner.weight_bytes(), kv, parameter_count(config),
                                        figures["decode_tokens_per_s"], copy, flops,
                                        slower_than_baseline=ratio[variant][2] < 1)
        per_token = row["bytes_per_token"]
        copy_fraction[variant] = (row["bandwidth_fraction"], per_token * low / copy, per_token * high / copy)
        print(f"{variant} | {figures['decode_tokens_per_s']:.1f} | [{low:.1f}, {high:.1f}] | "
              f"{interval(*ratio[variant])} | {per_token / 1e6:.0f} | {row['bandwidth_gbps']:.0f} | "
              f"{interval(*copy_fraction[variant])} | {row['bound']} | {paths[variant]}", flush=True)
    if "fp16:compile=true" in copy_fraction:
        print(f"target: fp16:compile=true at >= {COPY_TARGET} of copy bandwidth: "
              f"{target_reading(copy_fraction['fp16:compile=true'], COPY_TARGET)}", flush=True)
    if base == "fp16:compile=true" and "int4-g128:compile=true" in ratio:
        print(f"target: int4-g128:compile=true at >= {INT4_TARGET}x fp16:compile=true: "
              f"{target_reading(ratio['int4-g128:compile=true'], INT4_TARGET)}", flush=True)
    for runner in runners.values():
        try:
            profile_steps(runner, prompt)
        except Exception as exc:  # a profiler the device lacks is a finding, not a crash
            print(f"no profile of {runner.name}: {type(exc).__name__}: {exc}", flush=True)
        runner.close()
    release_memory()


def check_kernel_against_dequantize(source, device, new_tokens, runs) -> None:
    """int4-g128 with the fused kernel vs the same codes dequantized: logits, bytes, decode speed."""
    print(f"\n## int4 kernel vs dequantize path: {source} on {device}", flush=True)
    tokenizer = load_tokenizer(source)
    ids = eval_token_ids(tokenizer, "eval")[:256].reshape(2, 128)
    out = {}
    for kernel in (False, None):
        release_memory()
        model = quantize_rtn(load_model(source, dtype=torch.float32).to(device), 4, 128, kernel=kernel)
        runner = TorchRunner("int4-g128", model, tokenizer)
        logits = runner.logits(ids)
        lat = measure_latency(runner, ids[0, :32], new_tokens, runs, progress=False)
        out[kernel] = (logits, runner.weight_bytes(), lat, compute_paths(model))
        runner.close()
    (ref, ref_bytes, ref_lat, ref_paths), (ker, ker_bytes, ker_lat, ker_paths) = out[False], out[None]
    rel = float((ker - ref).norm() / ref.norm())
    top1 = float((ker.argmax(-1) == ref.argmax(-1)).float().mean())
    print(f"paths: {ref_paths} -> {ker_paths}\nlogits rel. diff {rel:.2e}, top-1 agreement {top1:.4f}\n"
          f"bytes {ref_bytes / 1e6:.2f} MB (dequantize) vs {ker_bytes / 1e6:.2f} MB (kernel)\n"
          f"decode {ref_lat['decode_tokens_per_s']:.1f} tok/s (dequantize) vs {ker_lat['decode_tokens_per_s']:.1f} "
          f"(kernel): x{ker_lat['decode_tokens_per_s'] / ref_lat['decode_tokens_per_s']:.2f}", flush=True)


def check_ragged(device) -> None:
    """A 1536x576 layer in groups of 128 (4.5 groups a row) on the kernel path vs the dequantize path."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(576, 1536).to(device)
    ref = PackedLinear.from_linear(linear, 4, 128, kernel=False)
    ker = PackedLinear.from_linear(linear, 4, 128)
    x = torch.randn(3, 576, device=device)
    with torch.no_grad():
        rel = float((ker(x) - ref(x)).norm() / ref(x).norm())
    held = lambda m: sum(t.numel() * t.element_size() for t in m.state_dict().values())  # noqa: E731
    print(f"\n## ragged groups (576 columns, g128) on {device}: {ker.compute_path}, output rel. diff {rel:.2e}, "
          f"bytes {held(ref)} (dequantize) / {held(ker)} (kernel)", flush=True)


def check_streaming(source, device, new_tokens) -> None:
    """Layer streaming with prefetch (pinned memory and a side stream on CUDA) against the resident model."""
    from edgekit.runtimes.pytorch.streaming import StreamingRunner, stream_device_map

    tokenizer = load_tokenizer(source)
    prompt = eval_token_ids(tokenizer, "eval")[:16].reshape(1, -1)
    resident = build_runner(with_device("fp32", device), source, tokenizer)
    want = list(resident.generate_stream(prompt, new_tokens))
    budget = int(resident.weight_bytes() * 0.7)
    resident.close()
    device_map = stream_device_map(source, budget, dtype=torch.float32)
    runner = StreamingRunner(source, device_map, tokenizer, device=device, dtype=torch.float32)
    got = list(runner.generate_stream(prompt, new_tokens))
    lat = measure_latency(runner, prompt, new_tokens, 2, progress=False)
    print(f"\n## layer streaming on {device}: {len(runner.streamed)} layers streamed, same tokens as resident: "
          f"{got == want}, {lat['decode_tokens_per_s']:.1f} tok/s", flush=True)
    runner.close()


def big_checkpoint(preset: str, folder: Path) -> str:
    if not (folder / "config.json").exists():
        config = PRESETS.get(preset) or json.loads((data_dir() / "configs" / f"{preset}.json").read_text())
        start = time.perf_counter()
        write_checkpoint(config, folder, "bf16")
        print(f"wrote {folder} in {time.perf_counter() - start:.0f} s", flush=True)
    return str(folder)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--variants", default=SMALL_VARIANTS, help="variants on the default model (first = baseline)")
    p.add_argument("--big-preset", default="llama-2-7b", help="a make_random_checkpoint preset, or 'none'")
    p.add_argument("--big-variants", default=BIG_VARIANTS, help="eager rows on the big checkpoint ('none': skip)")
    p.add_argument("--speed-variants", default=SPEED_VARIANTS, help="compiled rows on the big checkpoint, timed "
                                                                     "interleaved (first = baseline; 'none': skip)")
    p.add_argument("--repetitions", type=int, default=speed.REPETITIONS, help="interleaved rounds (compiled rows)")
    p.add_argument("--big-dir", type=Path, default=Path("/tmp/edgekit-gpu-check"))
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--eval-tokens", type=int, default=1024)
    p.add_argument("--big-first", action="store_true", help="the big checkpoint's section first (a short device "
                                                            "lease)")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here; run with --device cpu")
    start = time.perf_counter()
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"# gpu_check on {name}, torch {torch.__version__}; copy bandwidth "
          f"{device_bandwidth(args.device) / 1e9:.0f} GB/s", flush=True)
    settings = EvalSettings(context=128, stride=64, max_tokens=args.eval_tokens, batch_size=4)
    source = resolve_source("default")
    sections = [] if args.variants == "none" else [
        lambda: check_variants("every family", source, args.variants.split(","), args.device, settings,
                               args.new_tokens, args.runs),
        lambda: check_kernel_against_dequantize(source, args.device, args.new_tokens, args.runs),
        lambda: check_ragged(args.device),
    ]
    if args.big_preset != "none":
        big = lambda: big_checkpoint(args.big_preset, args.big_dir / args.big_preset)  # noqa: E731
        big_sections = []
        if args.speed_variants != "none":
            big_sections.append(lambda: check_compiled_speed(big(), args.speed_variants.split(","), args.device,
                                                             args.new_tokens, args.repetitions))
        if args.big_variants != "none":
            big_sections.append(lambda: check_variants(f"{args.big_preset}-shaped", big(),
                                                       args.big_variants.split(","), args.device,
                                                       EvalSettings(128, 128, 256, 2), args.new_tokens, args.runs))
        sections = big_sections + sections if args.big_first else sections + big_sections
    sections.append(lambda: check_streaming(source, args.device, 8))
    for section in sections:
        try:
            section()
        except Exception:
            traceback.print_exc(limit=4, file=sys.stdout)
        print(f"[{time.perf_counter() - start:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
