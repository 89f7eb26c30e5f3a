"""Reports of a comparison: one self-contained HTML page (figures embedded as base64 PNG) and
a Markdown file with its figure beside it, written from the same results the dashboard shows.

A report holds, for each model, the comparison table (quality with its uncertainty, bytes,
latency), the figure (Δppl and KL vs weight bytes with the Pareto front, latency percentiles
and, when a device is named, the memory plan per variant on that device), every failed variant
with its reason and the settings it was measured with; then the environment. A sweep over
several models gets a section per model, each against its own baseline: a Δppl or KL is only
meaningful against the baseline of the same weights, so rows of different models never share
a table or a Pareto front. A row whose scheme reproduces the grid the baseline's weights already
lie on is flagged under its table (:func:`edgekit.workflows.compare.grid_lines`): its error is
understated. Earlier runs from the :class:`~edgekit.measure.store.ResultStore` can be
laid beside the new one (each model's section takes that model's rows). The layout follows
llama.cpp's ``perplexity --kl-divergence`` summary: each quality figure with its ± error.
"""
from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from edgekit.core.errors import EdgekitError, InputError
from edgekit.measure.store import Result
from edgekit.memory.plan import plan_memory
from edgekit.memory.profiles import load_profile
from edgekit.ui.plots import comparison_figure, figure_png
from edgekit.workflows.compare import grid_lines, summary_frame

CURRENT_RUN = "this run"


def run_label(results: list[Result]) -> str:
    """A short name for a stored run: its date, run id and the revision of the weights it measured."""
    first = results[0]
    return f"{first.created[:16].replace('T', ' ')} ({first.run_id[:6]}, {first.model_revision})"


def by_model(results: list[Result]) -> dict[str, list[Result]]:
    """``results`` split into the groups that share a baseline: one per model (per model and eval
    text when a sweep scored several texts), in the order they first appear (a sweep's cell order);
    the keys are the groups' headings."""
    texts = {r.settings.get("eval_text") for r in results}
    groups: dict[str, list[Result]] = {}
    for r in results:
        heading = r.model if len(texts) == 1 else f"{r.model} on {r.settings.get('eval_text')}"
        groups.setdefault(heading, []).append(r)
    return groups


def comparison_frame(results: list[Result], earlier: dict[str, list[Result]] | None = None) -> pd.DataFrame:
    """The summary table of ``results``; with ``earlier`` runs ({label: results}) their rows
    follow, each row naming its run in a first ``run`` column. Results of several models (a
    sweep) come model by model under a first ``model`` column, each model's earlier rows after
    its own."""
    groups = by_model(results)
    if len(groups) > 1:
        frames = [comparison_frame(rs, _of_model(earlier, rs[0].model)).assign(model=heading)
                  for heading, rs in groups.items()]
        frame = pd.concat(frames, ignore_index=True)
        return frame[["model"] + [c for c in frame.columns if c != "model"]]
    runs = {CURRENT_RUN: results, **(earlier or {})}
    frames = [summary_frame(rs).assign(run=label) for label, rs in runs.items() if rs]
    if not frames:
        return pd.DataFrame()
    frame = pd.concat(frames, ignore_index=True)
    if len(frames) == 1:
        return frame.drop(columns="run")
    return frame[["run"] + [c for c in frame.columns if c != "run"]]


def _of_model(earlier: dict[str, list[Result]] | None, model: str) -> dict[str, list[Result]]:
    return {label: [r for r in rs if r.model == model] for label, rs in (earlier or {}).items()}


def device_memory_frame(model: str, variants: list[str], device, context: int = 4096, batch: int = 1,
                        measured: list[Result] | None = None) -> pd.DataFrame:
    """The memory plan (:func:`edgekit.memory.plan.plan_memory`) of each variant of ``model`` (the
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
    """Write ``report.html`` (self-contained) and ``report.md`` with its figures into ``out_dir``;
    returns the HTML path. Each model gets its section, table and figure (``report.png``, or
    ``report-1.png``, ``report-2.png``... for several models). ``device`` adds the memory plan of
    every variant of ``plan_model`` (default: the section's model) on that device profile."""

    if not results:
        raise InputError("there are no results to report; run a comparison first")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    groups = by_model(results)
    sections = []
    for number, (heading, rs) in enumerate(groups.items(), 1):
        model = rs[0].model
        table = comparison_frame(rs, earlier if len(groups) == 1 else _of_model(earlier, model))
        memory = None
        if device:
            planned = plan_model or model
            memory = device_memory_frame(planned, [r.variant for r in rs], device,
                                         context or rs[0].settings.get("context", 4096),
                                         measured=rs if planned == model else None)
        png = figure_png(comparison_figure(table if "run" in table else table.assign(run=""), memory))
        figure_name = "report.png" if len(groups) == 1 else f"report-{number}.png"
        (out / figure_name).write_bytes(png)
        sections.append(_section(heading, rs, table, memory, figure_name, png))
    (out / "report.md").write_text(_markdown(results, sections), encoding="utf-8")
    html_path = out / "report.html"
    html_path.write_text(_html(results, sections), encoding="utf-8")
    return html_path


def _section(heading: str, results: list[Result], table: pd.DataFrame, memory: pd.DataFrame | None,
             figure_name: str, png: bytes) -> dict:
    first = results[0]
    plan_table = None
    if memory is not None:
        gib = 1024 ** 3
        plan_table = pd.DataFrame({
            "variant": memory["variant"],
            **{label: memory[key] / gib if key in memory else None
               for key, label in (("weight_bytes", "weights GiB"), ("kv_cache_bytes", "KV GiB"),
                                  ("total_bytes", "total GiB"), ("budget_bytes", "budget GiB"))},
            "verdict": memory["verdict"]})
    return {"heading": heading, "table": table, "figure": figure_name, "png": png,
            "about": f"baseline {first.settings.get('baseline', first.variant)}, weights revision "
                     f"{first.model_revision}, run {first.run_id}",
            "failed": [(r.variant, r.error) for r in results if r.status != "ok"], "grid": grid_lines(results),
            "settings": dict(first.settings), "plan": plan_table, "plan_title": None if memory is None else
            f"Memory plan: {memory['model'].iloc[0]} on {memory['device'].iloc[0]}, context "
            f"{memory['context'].iloc[0]}"}


def _environment(results: list[Result]) -> dict:
    env = results[0].environment
    return {"edgekit": env.get("edgekit"), "git revision": env.get("git_revision"), "cpu": env.get("cpu"),
            "cores": env.get("cpu_cores"), "torch threads": env.get("torch_threads"), "gpu": env.get("gpu"),
            "python": env.get("python"), **env.get("versions", {})}


def _title(results: list[Result], sections: list[dict]) -> tuple[str, str]:
    first = results[0]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if len(sections) == 1:
        return (f"edgekit comparison: {first.model}",
                f"run {first.run_id}, measured {first.created}, report written {when}; baseline "
                f"{first.settings.get('baseline', first.variant)}")
    return (f"edgekit sweep: {len(sections)} models",
            f"{', '.join(s['heading'] for s in sections)}; measured from {min(r.created for r in results)}, "
            f"report written {when}; each model against its own baseline")


READING_NOTE = ("Δppl % is the perplexity change against the baseline with its 95% interval; KL is the mean "
                "per-token KL divergence from the baseline's next-token distribution (± one standard error), "
                "top-1 the share of tokens where the variant's most likely next token matches the baseline's. "
                "Latency percentiles are per generated token after warm-up; timings are as noisy as the "
                "machine they ran on.")


def _markdown(results: list[Result], sections: list[dict]) -> str:
    title, subtitle = _title(results, sections)
    lines = [f"# {title}", "", subtitle, "", READING_NOTE, ""]
    several = len(sections) > 1
    h = "###" if several else "##"  # one model: its parts are the report's sections
    for s in sections:
        if several:
            lines += [f"## {s['heading']}", "", s["about"], ""]
        lines += [f"{h} Results", "", _md_table(s["table"]), "", *[f"- {line}" for line in s["grid"]],
                  *([""] if s["grid"] else []), f"![comparison]({s['figure']})", ""]
        if s["failed"]:
            lines += [f"{h} Failed variants", ""] + [f"- **{v}**: {e}" for v, e in s["failed"]] + [""]
        if s["plan"] is not None:
            lines += [f"{h} {s['plan_title']}", "", _md_table(s["plan"]), ""]
        lines += [f"{h} Settings", "", "```json", json.dumps(s["settings"], indent=1, default=str), "```", ""]
    lines += ["## Environment", "", *[f"- {k}: {v}" for k, v in _environment(results).items() if v is not None], ""]
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


def _html(results: list[Result], sections: list[dict]) -> str:
    title, subtitle = _title(results, sections)
    e = html.escape
    several = len(sections) > 1
    h = "h3" if several else "h2"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{e(title)}</h1><p>{e(subtitle)}</p>",
             f"<p class='note'>{e(READING_NOTE)}</p>"]
    for s in sections:
        if several:
            parts += [f"<section><h2>{e(s['heading'])}</h2><p>{e(s['about'])}</p>"]
        parts += [f"<{h}>Results</{h}>",
                  s["table"].to_html(index=False, na_rep="", float_format=lambda x: f"{x:.4g}", border=0),
                  *([f"<ul>{''.join(f'<li>{e(line)}</li>' for line in s['grid'])}</ul>"] if s["grid"] else []),
                  f"<img alt='comparison' src='data:image/png;base64,{base64.b64encode(s['png']).decode()}'>"]
        if s["failed"]:
            parts += [f"<{h}>Failed variants</{h}><ul>"] + [f"<li class='error'><b>{e(v)}</b>: {e(str(err))}</li>"
                                                           for v, err in s["failed"]] + ["</ul>"]
        if s["plan"] is not None:
            parts += [f"<{h}>{e(s['plan_title'])}</{h}>",
                      s["plan"].to_html(index=False, na_rep="", float_format=lambda x: f"{x:.3g}", border=0)]
        parts += [f"<{h}>Settings</{h}>", f"<pre>{e(json.dumps(s['settings'], indent=1, default=str))}</pre>"]
        if several:
            parts.append("</section>")
    parts += ["<h2>Environment</h2><ul>"] + [f"<li>{e(str(k))}: {e(str(v))}</li>"
                                            for k, v in _environment(results).items() if v is not None]
    parts.append("</ul></body></html>")
    return "\n".join(parts)
