"""The report's HTML page: sections of figures and tables, in one self-contained file.

:func:`render_html` lays the figures out with plotly.js embedded from the installed ``plotly``
package, so the page opens offline; its style and script are ``static/report.css`` and
``static/report.js``. The figures' JSON is embedded with ``<``, ``>`` and ``&`` escaped, so a
``<script>`` in a study name or a fail reason stays text.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from tuner.errors import TunerError
from tuner.report.data import (
    Figure,
    Summary,
    Table,
    choices_data,
    compare_data,
    compare_table,
    finite,
    history_data,
    importance_data,
    learning_curves_data,
    lr_finder_data,
    parallel_data,
    pruning_savings_data,
    summary_data,
    table_data,
    timeline_data,
)
from tuner.report.figures import (
    _iso,
    draw_choice_box,
    draw_compare,
    draw_cost,
    draw_history,
    draw_importances,
    draw_learning_curves,
    draw_lr_finder,
    draw_parallel,
    draw_pruning_savings,
    draw_timeline,
    escape,
)
from tuner.report.snapshot import StudySnapshot, load_snapshot


@dataclass
class Section:
    """One part of the page: a title, a line of text, figures (by id) and any extra HTML."""

    id: str
    title: str
    text: str = ""
    figures: list[tuple[str, Figure]] = field(default_factory=list)
    html: str = ""


def _static(name: str) -> str:
    """A file of the page's own style or script, shipped in ``tuner/report/static``."""
    return resources.files("tuner.report").joinpath("static", name).read_text(encoding="utf-8")


def _hours(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def header_html(summary: Summary) -> str:
    states = ", ".join(f"{n} {s.lower()}" for s, n in summary.states.items()) or "none"
    lines = [f"<h1>Study {escape(summary.study)}</h1>",
             f"<p class='meta'>storage <code>{escape(summary.storage)}</code> · {summary.trials} trials "
             f"({escape(states)}) · total compute {_hours(summary.compute_s)} · {escape(summary.direction)} "
             f"{escape(summary.metric)}</p>"]
    best = summary.best
    if best is None:
        reason = "no trial has finished yet" if not summary.finished else "no trial has completed yet"
        lines.append(f"<p class='empty'>This study has no finished trials to compare: {reason}.</p>"
                     if not summary.finished else f"<p class='empty'>No best trial: {reason}.</p>")
        return "\n".join(lines)
    params = ", ".join(f"{escape(k)}={escape(_format(v))}" for k, v in best.params.items())
    pmr = f", PMR {best.val_pmr:.3f}" if finite(best.val_pmr) else ""
    lines.append(f"<p class='best'>Best validation {escape(summary.metric)}: <b>{best.value:.4f}</b>{pmr} "
                 f"(trial {best.number}: {params})</p>")
    test = summary.test
    if test:
        extra = f", PMR {test['pmr']:.3f}" if "pmr" in test else ""
        lines.append(f"<p class='best'>Its test tau: <b>{test['kendall_tau']:.4f}</b>{extra}</p>")
    else:
        lines.append("<p class='meta'>Its test tau: not evaluated yet (<code>tuner evaluate --study NAME</code> "
                     "records it).</p>")
    return "\n".join(lines)


def table_html(table: Table, table_id: str = "trials") -> str:
    head = "".join(f"<th data-col='{i}' title='sort'>{escape(c)}</th>" for i, c in enumerate(table.columns))
    body = []
    for row in table.rows:
        cells = []
        for text, key in row:
            sort = "" if key is None else (repr(key) if isinstance(key, (int, float)) else escape(key))
            kind = "n" if isinstance(key, (int, float)) else "s"
            wrap = " class='long'" if len(text) > 24 else ""
            cells.append(f"<td data-sort='{sort}' data-kind='{kind}'{wrap}>{escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<table class='sortable' id='{table_id}'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def study_sections(snapshot: StudySnapshot) -> list[Section]:
    """Every section of one study's report, its figures drawn from the pure data functions above."""
    trials, metric = snapshot.trials, snapshot.metric
    sections: list[Section] = []
    history = history_data(trials, snapshot.direction)
    if history.complete or history.pruned:
        sections.append(Section("history", "Optimisation history",
                                f"Each trial's {escape(metric)}, with the best complete value so far.",
                                [("plot-history", draw_history(history, metric))]))
    curves = learning_curves_data(trials, metric, snapshot.defaults)
    if curves.backbones:
        sections.append(Section("curves", "Learning curves",
                                f"Validation {escape(metric)} at every validation of every trial, coloured by "
                                "backbone; a cross marks where a pruned trial stopped.",
                                [("plot-curves", draw_learning_curves(curves, metric))]))
    savings = pruning_savings_data(trials, snapshot.defaults.get("max_epochs"))
    if savings.rows:
        totals = savings.totals
        sections.append(Section(
            "savings", "Pruning savings",
            f"{savings.pruned} pruned trials. The study trained {totals.epochs:.1f} epochs where a study "
            f"without pruning would have trained {totals.epochs_planned:.1f} "
            f"({totals.epochs_saved_fraction:.0%} saved), and spent {_hours(totals.seconds)} of compute "
            f"against an estimated {_hours(totals.seconds_planned)}.",
            [("plot-savings", draw_pruning_savings(savings))]))
    finder = lr_finder_data(trials, snapshot.user_attrs)
    if finder:
        reasons = "; ".join(f"{escape(c.backbone)} batch {escape(c.batch_size)}: "
                            f"{'reliable' if c.reliable else 'unreliable'} ({escape(c.reason)})" for c in finder)
        sections.append(Section("finder", "Learning-rate finder",
                                f"Each (backbone, batch size) curve, its suggestion (a star; hollow when judged "
                                f"unreliable) and the learning rates trials used (circles). {reasons}.",
                                [("plot-finder", draw_lr_finder(finder))]))
    else:
        sections.append(Section("finder", "Learning-rate finder",
                                "No finder curve is stored in this study (the finder was off, or no trial ran it)."))
    choices = choices_data(trials, snapshot.defaults)
    if choices.backbone:
        sections.append(Section("choices", "Backbones and batch sizes",
                                f"{escape(metric)} of complete trials per choice, and against each trial's wall time.",
                                [("plot-backbone", draw_choice_box(choices.backbone, "By backbone", "backbone",
                                                                   metric)),
                                 ("plot-batch", draw_choice_box(choices.batch_size, "By batch size", "batch size",
                                                                metric)),
                                 ("plot-cost", draw_cost(choices.cost, metric))]))
    parallel = parallel_data(trials)
    importance = importance_data(trials, snapshot.direction)
    figures: list[tuple[str, Figure]] = []
    if parallel.dimensions:
        figures.append(("plot-parallel", draw_parallel(parallel, metric)))
    if importance.by_parameter:
        figures.append(("plot-importance", draw_importances(importance.by_parameter)))
    if figures or importance.reason:
        text = "Every parameter the complete trials share, and the learning rate used."
        if parallel.left_out:
            text += f" Not in every trial, so left out: {escape(', '.join(parallel.left_out))}."
        if importance.reason:
            text += f" No importances: {escape(importance.reason)}."
        sections.append(Section("parameters", "Parameters", text, figures))
    timeline = timeline_data(trials, snapshot.taken_at)
    if timeline.bars:
        stale = sum(1 for b in timeline.bars if b.state == "FAIL (stale)")
        sections.append(Section("timeline", "Worker timeline",
                                f"One lane per worker; {len(timeline.links)} retries (dotted lines from the trial "
                                f"they replace), {stale} trials lost with their worker (hatched).",
                                [("plot-timeline", draw_timeline(timeline))]))
    sections.append(Section("table", "All trials", "Click a column's header to sort.",
                            html=table_html(table_data(trials, snapshot.defaults, snapshot.taken_at))))
    return sections


def compare_sections(snapshots: Sequence[StudySnapshot]) -> list[Section]:
    studies = compare_data(snapshots)
    names = ["plot-compare-trial", "plot-compare-compute", "plot-compare-states"]
    return [Section("compare", "Studies compared", "The best value so far by trial and by compute, and trial states.",
                    list(zip(names, draw_compare(studies), strict=True)),
                    table_html(compare_table(studies), "compare-table"))]


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null (JSON.parse rejects NaN), datetimes ISO strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, datetime):
        return _iso(value)
    return value


def script_json(value: Any) -> str:
    """JSON that is safe inside a ``<script>`` element: no ``<``, ``>`` or ``&`` can end or open a tag."""
    text = json.dumps(_clean(value), allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(title: str, header: str, sections: Sequence[Section]) -> str:
    """The whole page: header, sections with their figures, plotly.js and the figures' data inline."""
    from plotly.offline import get_plotlyjs

    figures: dict[str, Figure] = {}
    parts = [header]
    nav = " · ".join(f"<a href='#{s.id}'>{escape(s.title)}</a>" for s in sections)
    if nav:
        parts.append(f"<nav>{nav}</nav>")
    for section in sections:
        body = [f"<section id='{section.id}'><h2>{escape(section.title)}</h2>"]
        if section.text:
            body.append(f"<p>{section.text}</p>")
        for figure_id, figure in section.figures:
            figures[figure_id] = figure
            body.append(f"<div class='plot' id='{figure_id}'></div>")
        if section.html:
            body.append(f"<div class='table-wrap'>{section.html}</div>")
        body.append("</section>")
        parts.append("".join(body))
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{_static('report.css')}</style>"
        f"<script>{get_plotlyjs()}</script></head><body>\n" + "\n".join(parts) +
        f"\n<script type='application/json' id='figure-data'>{script_json(figures)}</script>"
        f"\n<script>{_static('report.js')}</script>\n</body></html>\n"
    )


def build_report(snapshot: StudySnapshot, others: Sequence[StudySnapshot] = ()) -> str:
    """The report of one study (and, with ``others``, the studies compared) as one HTML page."""
    summary = summary_data(snapshot)
    sections = study_sections(snapshot) if snapshot.trials else []
    if others:
        sections += compare_sections([snapshot, *others])
    title = f"tuner report: {snapshot.name}" + (f" vs {', '.join(o.name for o in others)}" if others else "")
    return render_html(title, header_html(summary), sections)


def write_report(study: str, output: str | Path = "report.html", storage: str | None = None,
                 compare: Sequence[str] = ()) -> tuple[Path, float]:
    """Read the study (and those to compare) and write the report; returns the path and the seconds it took."""
    started = time.perf_counter()
    snapshot = load_snapshot(study, storage)
    others = [load_snapshot(other, storage) for other in compare]
    page = build_report(snapshot, others)
    path = Path(output)
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as err:
        raise TunerError(f"cannot write the report to {path}: {err}") from None
    return path, time.perf_counter() - started
