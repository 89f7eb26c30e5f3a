"""`edgekit compare` end to end on the default model, and its answers to bad input."""
import json
import os
import re
import subprocess
import sys

import pytest

from edgekit.cli import main
from edgekit.core.errors import EdgekitError
from edgekit.measure.store import ResultStore
from edgekit.workflows.compare import COMPARE_JSON_KEYS

ISSUE_KEYS = {"variant", "perplexity", "delta_ppl_pct", "kl_divergence", "top1_agreement", "weight_bytes",
              "peak_rss_bytes", "ttft_ms", "decode_tokens_per_s", "latency_ms_p50", "scored_tokens"}
SPEED_KEYS = {"decode_tokens_per_s_ci95", "ttft_ms_ci95", "speed_ratio_ci95", "cold_start_ms", "repetitions",
              "contended", "bandwidth_gbps", "bandwidth_fraction", "bound"}


def edgekit(*args, tmp_path):
    env = {**os.environ, "EDGEKIT_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_compare_end_to_end(tmp_path):
    out = tmp_path / "compare.json"
    proc = edgekit("compare", "--model", "default", "--variants", "fp32,int8,int4-g32", "--max-tokens", "384",
                   "--context", "128", "--stride", "64", "--new-tokens", "3", "--runs", "2", "--json", str(out),
                   tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    assert [r["variant"] for r in rows] == ["fp32", "int8", "int4-g32"]
    assert ISSUE_KEYS <= set(rows[0]) and set(COMPARE_JSON_KEYS) <= set(rows[0])
    for row in rows:
        assert row["status"] == "ok" and row["error"] is None
        assert row["scored_tokens"] == 383 and row["perplexity"] > 1
        assert all(row[k] is not None for k in ISSUE_KEYS) and SPEED_KEYS <= set(row)
        assert row["latency_ms_p95"] is None and row["latency_ms_p99"] is None  # 4 decode steps: withheld
        assert row["repetitions"] == 2 and row["speed_protocol"] == "interleaved" and row["cold_start_ms"] > 0
        low, high = row["decode_tokens_per_s_ci95"]
        assert low <= row["decode_tokens_per_s"] <= high and row["bound"] and row["bandwidth_gbps"] > 0
    assert rows[0]["delta_ppl_pct"] == 0 and rows[0]["kl_divergence"] == 0 and rows[0]["top1_agreement"] == 1
    assert rows[0]["speed_ratio_ci95"] == [1.0, 1.0] and rows[1]["speed_ratio_ci95"][0] <= rows[1]["speed_ratio"]
    assert rows[2]["kl_divergence"] > 0 and rows[2]["weight_bytes"] < rows[1]["weight_bytes"] < rows[0]["weight_bytes"]
    assert "int4-g32" in proc.stdout and "Δppl %" in proc.stdout  # the tables are printed: quality, then speed
    assert proc.stdout.index("quality:") < proc.stdout.index("speed and memory:")
    decimals = re.findall(r"(?<![\w.])\d[\d,]*\.\d+", proc.stdout.split("results stored")[0])
    raw = [d for d in decimals if len(d.replace(",", "").replace(".", "").lstrip("0")) > 4
           and len(d.split(".")[1]) != 2]  # 3 significant figures, or a size in MB at 2 decimals
    assert decimals and not raw, raw
    assert (tmp_path / "results.sqlite").exists()
    reps = ResultStore(tmp_path / "results.sqlite").repetitions(run_id=rows[0]["run_id"])
    assert len(reps) == 6 and sorted(set(reps["round"])) == [0, 1]
    assert all(len(g) == 2 for g in reps["gaps_ms"])  # the raw repetitions are kept


@pytest.mark.parametrize("args,message", [
    (["--variants", "fp32,int5-g7x"], "unknown variant 'int5-g7x'; valid variants: fp32"),
    (["--eval-text", "no/such/file.txt"], "no text file at 'no/such/file.txt'"),
    (["--eval-text", "To be, or not to be."], "fewer than the context"),
])
def test_bad_input_exits_2_with_one_line(args, message, tmp_path, capsys):
    assert main(["compare", "--no-latency", "--store", str(tmp_path / "r.sqlite"), *args]) == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("edgekit: error:")]
    assert len(errors) == 1 and message in errors[0], stderr
    assert "Traceback" not in stderr


def test_compare_keeps_a_top_k_baseline_on_disk(tmp_path, monkeypatch):
    """``baseline_top_k``: the baseline is kept on disk as its top-k log-probabilities; the rows say so, and a
    resumed comparison measures the next variant against that file (the baseline model is not loaded again)."""
    from edgekit.measure.quality import EvalSettings, Scores
    from edgekit.measure.store import ResultStore
    from edgekit.workflows.compare import compare

    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path))
    settings, store = EvalSettings(128, 64, 384), ResultStore(tmp_path / "r.sqlite")
    first = compare("default", ["fp32", "int8"], settings=settings, latency=None, store=store, progress=False,
                    baseline_top_k=64)
    assert [r.metrics["kl_base_top_k"] for r in first] == [64, 64]
    kept = [Scores.load(folder) for folder in (tmp_path / "baselines").iterdir()]
    assert len(kept) == 1 and kept[0].logprobs is None and kept[0].top_ids.shape == (383, 64)
    more = compare("default", ["fp32", "int8", "int4-g32"], settings=settings, latency=None, store=store,
                   progress=False, resume=True)
    assert [r.run_id for r in more[:2]] == [r.run_id for r in first] and more[2].run_id != first[0].run_id
    assert more[2].metrics["kl_base_top_k"] == 64 and more[2].metrics["kl_divergence"] > 0
    with pytest.raises(EdgekitError, match="baseline_top_k"):
        compare("default", ["fp32"], settings=settings, latency=None, baseline_top_k="all")


def test_a_variant_list_keeps_each_variants_own_options():
    """Options are comma-separated inside a comma-separated list: a key=value item continues the variant before it."""
    from edgekit.cli import build_parser

    args = build_parser().parse_args(["compare", "--variants",
                                      "fp32,int4-g32:embed=8,compile=true,kq4:sensitive=6,nf4:device=cuda:1,int8"])
    assert args.variants == ["fp32", "int4-g32:embed=8,compile=true", "kq4:sensitive=6", "nf4:device=cuda:1", "int8"]
