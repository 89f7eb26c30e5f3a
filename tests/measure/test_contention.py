"""The contention classifier on recorded /proc snapshots: quiet, another process on our cores, steal on a VM."""
import pytest

from edgekit.measure.contention import (
    MIN_WINDOW_S,
    Snapshot,
    available,
    classify,
    classify_series,
    parse_stat,
    snapshot,
)

HZ = 100


def _stat(user, system, idle, steal=0, cores=2, running=1):
    """A /proc/stat as a 2-core VM writes it (the summed line, one line per core, the counters after)."""
    per_core = [f"cpu{i} {user // cores} 0 {system // cores} {idle // cores} 30 0 60 {steal // cores} 0 0"
                for i in range(cores)]
    return "\n".join([f"cpu  {user} 0 {system} {idle} 60 0 120 {steal} 0 0", *per_core,
                      "intr 355469 0 0 0", "ctxt 371253", "btime 1764750000", "processes 11348",
                      f"procs_running {running}", "procs_blocked 0", "softirq 1 2 3"]) + "\n"


def _snap(wall, cpu, stat, load="0.20 0.30 0.25 1/99 11348\n"):
    return Snapshot(wall_s=wall, process_cpu_s=cpu, threads=9, loadavg=load, stat=stat)


BEFORE = _snap(100.0, 50.0, _stat(69170, 8766, 20661, 798))


def test_parse_stat_reads_the_summed_line_the_cores_and_the_run_queue():
    parsed = parse_stat(_stat(69170, 8766, 20661, 798, running=3))
    assert parsed["user"] == 69170 and parsed["steal"] == 798 and parsed["cores"] == 2
    assert parsed["procs_running"] == 3


def test_quiet_when_the_busy_time_is_our_own():
    # one second, both threads ours: 190 ticks busy of 200, our process used 1.88 s of CPU
    after = _snap(101.0, 51.88, _stat(69170 + 170, 8766 + 20, 20661 + 10, 798))
    reading = classify(BEFORE, after, threads_used=2, hz=HZ)
    assert not reading.contended and reading.reason == "quiet"
    assert reading.own_cores == pytest.approx(1.88) and reading.others_cores == pytest.approx(0.02)
    assert reading.cores == 2 and reading.steal_share == 0


def test_contended_when_another_process_holds_a_core_we_run_on():
    # a busy loop on one core: the cores are fully busy, our process got only 1.0 s of CPU in the second
    after = _snap(101.0, 51.0, _stat(69170 + 185, 8766 + 15, 20661, 798), load="2.10 1.0 0.5 3/101 11400\n")
    reading = classify(BEFORE, after, threads_used=2, hz=HZ)
    assert reading.contended and "other processes used 1.00 cores" in reading.reason
    assert reading.load_1m == pytest.approx(2.1)
    # the same neighbour beside a one-thread run on two cores leaves the run its core: quiet
    assert not classify(BEFORE, after, threads_used=1, hz=HZ).contended


def test_contended_when_the_hypervisor_steals_time():
    after = _snap(101.0, 1.5 + 50.0, _stat(69170 + 150, 8766, 20661 + 20, 798 + 30))
    reading = classify(BEFORE, after, threads_used=2, hz=HZ)
    assert reading.contended and reading.steal_share == pytest.approx(30 / 200) and "steal" in reading.reason


def test_short_windows_are_widened_to_the_minimum():
    """Repetitions of 50 ms are judged on the quarter second around them; a neighbour inside it is seen."""
    marks, user, cpu = [], 69170, 50.0
    for i in range(11):
        marks.append(_snap(100.0 + 0.05 * i, cpu, _stat(user, 8766, 20661, 798)))
        user, cpu = user + 10, cpu + 0.05 + (0.0 if 4 <= i < 8 else 0.05)  # repetitions 4-7: we got half the CPU
    readings = classify_series(marks, threads_used=2, hz=HZ)
    assert len(readings) == 10 and all(r.wall_s >= MIN_WINDOW_S - 1e-9 for r in readings)
    assert [r.contended for r in readings][4:8] == [True] * 4 and not readings[0].contended


@pytest.mark.skipif(not available(), reason="no /proc counters on this system")
def test_snapshot_reads_this_machine():
    now = snapshot()
    assert parse_stat(now.stat)["cores"] >= 1 and now.threads >= 1 and now.process_cpu_s > 0
