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
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_random_checkpoint import PRESETS, write_checkpoint  # noqa: E402

from edgekit.core.paths import data_dir, eval_token_ids  # noqa: E402
from edgekit.measure.latency import device_bandwidth, measure_latency  # noqa: E402
from edgekit.measure.peak_memory import PeakMemory, release_memory  # noqa: E402
from edgekit.measure.quality import EvalSettings, score  # noqa: E402
from edgekit.memory.bytes import weight_bytes as planned_bytes  # noqa: E402
from edgekit.models.load import load_model, load_tokenizer, resolve_source  # noqa: E402
from edgekit.models.runner import TorchRunner  # noqa: E402
from edgekit.quantizers.packed import PackedLinear, compute_paths, quantize_rtn  # noqa: E402
from edgekit.runtimes import build_runner  # noqa: E402

SMALL_VARIANTS = ("fp32,fp16,bf16,int8,nf4,fp4,int4-g32,int4-g128,int3-g128,int2-g64,gptq-int4-g128,"
                  "awq-int4-g128,mixed-int4-g128-k4,qat-int2-g64:steps=8")
BIG_VARIANTS = "fp16,nf4,int8,int4-g128,int4-g32,fp16:compile=true,int4-g128:compile=true"
COLUMNS = ("variant", "path", "plan MB", "held MB", "held/plan", "load peak MB", "load peak/plan", "peak MB", "KL",
           "top-1", "tok/s", "GB/s", "of copy", "warm-ups", "load s")


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
    row.update({"tok/s": lat["decode_tokens_per_s"], "GB/s": lat["achieved_bandwidth_gb_s"],
                "of copy": lat["bandwidth_fraction"],
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
    p.add_argument("--big-variants", default=BIG_VARIANTS)
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
    sections = [
        lambda: check_variants("every family", source, args.variants.split(","), args.device, settings,
                               args.new_tokens, args.runs),
        lambda: check_kernel_against_dequantize(source, args.device, args.new_tokens, args.runs),
        lambda: check_ragged(args.device),
    ]
    if args.big_preset != "none":
        big = lambda: big_checkpoint(args.big_preset, args.big_dir / args.big_preset)  # noqa: E731
        sections.append(lambda: check_variants(f"{args.big_preset}-shaped", big(), args.big_variants.split(","),
                                               args.device, EvalSettings(128, 128, 256, 2), args.new_tokens,
                                               args.runs))
        if args.big_first:
            sections.insert(0, sections.pop())
    sections.append(lambda: check_streaming(source, args.device, 8))
    for section in sections:
        try:
            section()
        except Exception:
            traceback.print_exc(limit=4, file=sys.stdout)
        print(f"[{time.perf_counter() - start:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
