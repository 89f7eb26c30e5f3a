"""The roofline: bytes per token, achieved bandwidth against the measured peak, and the verdict's thresholds."""
import math

import pytest

from edgekit.measure.roofline import (
    COMPUTE_BOUND_FRACTION,
    MEMORY_BOUND_FRACTION,
    matmul_throughput,
    roofline_figures,
    triad_bandwidth,
    verdict,
)

GB = 1e9


def test_figures_count_weights_and_kv_cache_read_per_token():
    # 1 GB of weights + 0.1 GB of KV cache a token at 10 tokens/s: 11 GB/s, half of a 22 GB/s machine
    out = roofline_figures(weight_bytes=10**9, kv_bytes_read=10**8, parameters=250_000_000, tokens_per_s=10.0,
                           peak_bytes_per_s=22 * GB, peak_flops=1000 * GB)
    assert out["bytes_per_token"] == 1_100_000_000
    assert out["bandwidth_gbps"] == pytest.approx(11.0) and out["bandwidth_fraction"] == pytest.approx(0.5)
    assert out["compute_fraction"] == pytest.approx(2 * 250e6 * 10 / 1000e9)
    assert out["bound"] == "memory-bound"


@pytest.mark.parametrize("fraction,compute,bytes_per_param,slower,expected", [
    (MEMORY_BOUND_FRACTION, 0.9, 4.0, False, "memory-bound"),
    (0.1, COMPUTE_BOUND_FRACTION, 4.0, False, "compute-bound"),
    (0.1, 0.1, 0.6, True, "compute-bound (dequantize)"),   # fewer bytes than fp16, yet slower than its baseline
    (0.1, 0.1, 0.6, False, "overhead-bound"),              # fewer bytes, not slower: the fixed cost dominates
    (0.1, 0.1, 4.0, True, "overhead-bound"),               # dense weights cannot be dequantize-bound
])
def test_verdict_thresholds(fraction, compute, bytes_per_param, slower, expected):
    assert verdict(fraction, compute, bytes_per_param, slower) == expected


def test_a_tiny_model_far_below_the_roof_is_overhead_bound():
    """6.8M fp32 parameters (27 MB) at 100 tokens/s on a 10 GB/s machine: 2.8 GB/s, 28% of the roof."""
    out = roofline_figures(27_200_000, 500_000, 6_800_000, 100.0, 10 * GB, 50 * GB)
    assert out["bandwidth_fraction"] == pytest.approx(0.277) and out["bound"] == "overhead-bound"


def test_measurements_are_positive_rates():
    assert math.isfinite(triad_bandwidth(1, elements=1 << 16, trials=2)) and triad_bandwidth(1, 1 << 16, 2) > 0
    assert matmul_throughput(1, size=64, trials=2) > 0
