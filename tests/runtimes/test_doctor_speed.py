"""`edgekit doctor`'s speed lines: bandwidth, matmul throughput, and whether speed can be trusted right now."""
import pytest

from edgekit.measure.contention import available, check_now
from edgekit.runtimes.doctor import _speed


def test_doctor_prints_bandwidth_matmul_and_a_contention_verdict():
    checks = {c.topic: c for c in _speed()}
    assert list(checks) == ["bandwidth", "matmul", "contention"]
    assert "GB/s" in checks["bandwidth"].detail and "GFLOP/s" in checks["matmul"].detail
    verdict = checks["contention"]
    assert ("can be trusted now" in verdict.detail) == verdict.ok  # a failed check says what to do instead
    assert verdict.ok or "measure later" in verdict.detail


@pytest.mark.skipif(not available(), reason="no /proc counters on this system")
def test_the_fixed_kernel_window_is_classified():
    reading = check_now(1, seconds=0.3)
    assert reading.wall_s >= 0.3 and reading.threads_used == 1 and reading.own_cores > 0
    assert reading.contended == (reading.reason != "quiet")
