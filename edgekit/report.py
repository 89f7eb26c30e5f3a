"""Reports of a comparison: one self-contained HTML page (figures embedded as base64 PNG) and
a Markdown file with its figure beside it, written from the same results the dashboard shows.

A report holds the comparison table (quality with its uncertainty, bytes, latency), the
figure (Δppl and KL vs weight bytes with the Pareto front, latency percentiles and, when a
device is named, the memory plan per variant on that device), every failed variant with its
reason, the settings and the environment the run was measured in. Earlier runs from the
:class:`~edgekit.results.ResultStore` can be laid beside the new one. The layout follows
llama.cpp's ``perplexity --kl-divergence`` summary: each quality figure with its ± error.
"""
from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from edgekit import plots
from edgekit.compare import summary_frame
from edgekit.errors import EdgekitError, InputError
from edgekit.plan import load_profile, plan_memory
from edgekit.results import Result

CURRENT_RUN = "this run"


def run_label(results: list[Result]) -> str:
    """A short name for a stored run: its date, run id and the revision of the weights it measured."""
    first = results[0]
    return f"{first.created[:16].replace('T', ' ')} ({first.run_id[:6]}, {first.model_revision})"


def comparison_frame(results: list[Result], earlier: dict[str, list[Result]] | None = None) -> pd.DataFrame:
    """The summary table of ``results``; with ``earlier`` runs ({label: results}) their rows
    follow, each row naming its run in a first ``run`` column."""
    runs = {CURRENT_RUN: results, **(earlier or {})}
    frames = [summary_frame(rs).assign(run=label) for label, rs in runs.items() if rs]
    if not frames:
        return pd.DataFrame()
    frame = pd.concat(frames, ignore_index=True)
    if len(frames) == 1:
        return frame.drop(columns="run")
    return frame[["run"] + [c for c in frame.columns if c != "run"]]


def device_memory_frame(model: str, variants: list[str], device, context: int = 4096, batch: int = 1,
                        measured: list[Result] | None = None) -> pd.DataFrame:
    """The memory plan (:func:`edgekit.plan.plan_memory`) of each variant of ``model`` (the
    compared model or a 7B config such as ``llama-2-7b``) on ``device``; a variant the plan
    cannot price gets its reason. ``measured`` results of the same model add their peak RSS."""

    device = load_profile(device)  # an unknown device is the user's error, not one variant's
    peaks = {r.variant: r.metrics.get("peak_rss_bytes") for r in measured or [] if r.status == "ok"}
    rows = []
    for variant in variants:
        row = {"model": model, "variant": variant, "device": device.name, "context": context}
        try:
            plan = plan_memory(model, variant, context=context, batch=batch, device=device)
            row.update({k: getattr(plan, k) for k in ("weight_bytes", "kv_cache_bytes", "activation_bytes",
                                                      "runtime_overhead_bytes", "total_bytes", "budget_bytes",
                                                      "fits", "verdict")})
        except EdgekitError as exc:
            row["verdict"] = str(exc)
        row["peak_rss_bytes"] = peaks.get(variant)
        rows.append(row)
    return pd.DataFrame(rows)


def write_report(results: list[Result], out_dir, earlier: dict[str, list[Result]] | None = None,
                 device: str | None = None, plan_model: str | None = None, context: int | None = None) -> Path:
    """Write ``report.html`` (self-contained) and ``report.md`` + ``report.png`` into
    ``out_dir``; returns the HTML path. ``device`` adds the memory plan of every variant of
    ``plan_model`` (default: the compared model) on that device profile."""

    if not results:
        raise InputError("there are no results to report; run a comparison first")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_frame(results, earlier)
    plot_frame = table if "run" in table else table.assign(run="")
    memory = None
    if device:
        plan_model = plan_model or results[0].model
        plan_context = context or results[0].settings.get("context", 4096)
        measured = results if plan_model == results[0].model else None
        memory = device_memory_frame(plan_model, [r.variant for r in results], device, plan_context,
                                     measured=measured)
    figure = plots.comparison_figure(plot_frame, memory)
    png = plots.figure_png(figure)
    (out / "report.png").write_bytes(png)
    sections = _sections(results, table, memory)
    (out / "report.md").write_text(_markdown(results, sections), encoding="utf-8")
    html_path = out / "report.html"
    html_path.write_text(_html(results, sections, png), encoding="utf-8")
    return html_path


def _sections(results: list[Result], table: pd.DataFrame, memory: pd.DataFrame | None) -> dict:
    failed = [(r.variant, r.error) for r in results if r.status != "ok"]
    settings = dict(results[0].settings)
    env = results[0].environment
    environment = {"edgekit": env.get("edgekit"), "git revision": env.get("git_revision"), "cpu": env.get("cpu"),
                   "cores": env.get("cpu_cores"), "torch threads": env.get("torch_threads"), "gpu": env.get("gpu"),
                   "python": env.get("python"), **env.get("versions", {})}
    plan_table = None
    if memory is not None:
        gib = 1024 ** 3
        plan_table = pd.DataFrame({
            "variant": memory["variant"],
            **{label: memory[key] / gib if key in memory else None
               for key, label in (("weight_bytes", "weights GiB"), ("kv_cache_bytes", "KV GiB"),
                                  ("total_bytes", "total GiB"), ("budget_bytes", "budget GiB"))},
            "verdict": memory["verdict"]})
    return {"table": table, "failed": failed, "settings": settings, "environment": environment,
            "plan": plan_table, "plan_title": None if memory is None else
            f"Memory plan: {memory['model'].iloc[0]} on {memory['device'].iloc[0]}, context {memory['context'].iloc[0]}"}


def _title(results: list[Result]) -> tuple[str, str]:
    first = results[0]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"edgekit comparison: {first.model}",
            f"run {first.run_id}, measured {first.created}, report written {when}; baseline "
            f"{first.settings.get('baseline', results[0].variant)}")


READING_NOTE = ("Δppl % is the perplexity change against the baseline with its 95% interval; KL is the mean "
                "per-token KL divergence from the baseline's next-token distribution (± one standard error), "
                "top-1 the share of tokens where the variant's most likely next token matches the baseline's. "
                "Latency percentiles are per generated token after warm-up; timings are as noisy as the "
                "machine they ran on.")


def _markdown(results: list[Result], s: dict) -> str:
    title, subtitle = _title(results)
    lines = [f"# {title}", "", subtitle, "", "## Results", "", _md_table(s["table"]), "", READING_NOTE, "",
             "![comparison](report.png)", ""]
    if s["failed"]:
        lines += ["## Failed variants", ""] + [f"- **{v}**: {e}" for v, e in s["failed"]] + [""]
    if s["plan"] is not None:
        lines += [f"## {s['plan_title']}", "", _md_table(s["plan"]), ""]
    lines += ["## Settings", "", "```json", json.dumps(s["settings"], indent=1, default=str), "```", "",
              "## Environment", "", *[f"- {k}: {v}" for k, v in s["environment"].items() if v is not None], ""]
    return "\n".join(lines)


def _md_table(frame: pd.DataFrame) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else f"{value:.4g}"
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:13px;max-width:60em}
.error{color:#b00020}img{max-width:100%}"""


def _html(results: list[Result], s: dict, png: bytes) -> str:
    title, subtitle = _title(results)
    e = html.escape
    table = s["table"].to_html(index=False, na_rep="", float_format=lambda x: f"{x:.4g}", border=0)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{e(title)}</h1><p>{e(subtitle)}</p>",
             "<h2>Results</h2>", table, f"<p class='note'>{e(READING_NOTE)}</p>",
             f"<img alt='comparison' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"]
    if s["failed"]:
        parts += ["<h2>Failed variants</h2><ul>"] + [f"<li class='error'><b>{e(v)}</b>: {e(str(err))}</li>"
                                                    for v, err in s["failed"]] + ["</ul>"]
    if s["plan"] is not None:
        parts += [f"<h2>{e(s['plan_title'])}</h2>",
                  s["plan"].to_html(index=False, na_rep="", float_format=lambda x: f"{x:.3g}", border=0)]
    parts += ["<h2>Settings</h2>", f"<pre>{e(json.dumps(s['settings'], indent=1, default=str))}</pre>",
              "<h2>Environment</h2><ul>"] + [f"<li>{e(str(k))}: {e(str(v))}</li>"
                                             for k, v in s["environment"].items() if v is not None]
    parts.append("</ul></body></html>")
    return "\n".join(parts)
