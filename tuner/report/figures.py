"""The report's figures: plain values from :mod:`tuner.report.data` to plotly specifications.

Every string that comes from a study (its name, parameters, attributes, error messages) goes through
:func:`escape` before it reaches a figure.
"""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from tuner.report.data import (
    Bar,
    CostPoint,
    Figure,
    FinderCurve,
    History,
    LearningCurves,
    Parallel,
    PruningSavings,
    StudyComparison,
    Timeline,
    finite,
    loss_at,
)

STATE_COLOURS = {
    "COMPLETE": "#2a9d8f", "PRUNED": "#e9c46a", "FAIL": "#e63946", "FAIL (stale)": "#7b2cbf",
    "FAIL (interrupted)": "#8d99ae", "FAIL (not admitted)": "#e0e0e0", "RUNNING": "#4895ef", "WAITING": "#cccccc",
}


def escape(value: Any) -> str:
    """A user-supplied value as HTML text (plotly reads entities back as the literal characters)."""
    return html.escape(str(value), quote=True)


PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def _layout(title: str, x_title: str, y_title: str, **extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        "title": {"text": title}, "xaxis": {"title": {"text": x_title}}, "yaxis": {"title": {"text": y_title}},
        "margin": {"t": 50, "r": 20, "l": 60, "b": 50}, "height": 420, "hovermode": "closest",
        "legend": {"orientation": "h", "y": -0.2}}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(layout.get(key), dict):
            layout[key] = {**layout[key], **value}
        else:
            layout[key] = value
    return layout


def _colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def draw_history(points: History, metric: str) -> Figure:
    def trace(name: str, pairs: list[Any], **style: Any) -> dict[str, Any]:
        return {"type": "scatter", "name": name, "x": [p[0] for p in pairs], "y": [p[1] for p in pairs], **style}

    return {"data": [
        trace("complete", points.complete, mode="markers", marker={"color": STATE_COLOURS["COMPLETE"]}),
        trace("pruned (last value)", points.pruned, mode="markers",
              marker={"color": STATE_COLOURS["PRUNED"], "symbol": "x"}),
        trace("best so far", points.best, mode="lines", line={"shape": "hv", "color": "#264653"}),
    ], "layout": _layout("Optimisation history", "trial", escape(metric))}


def draw_learning_curves(curves: LearningCurves, metric: str) -> Figure:
    drawn = sum(len(trials) for trials in curves.backbones.values())
    opacity = 1.0 if drawn <= 50 else 0.4  # thousands of curves: let the bands show through
    data = []
    for i, (backbone, trials) in enumerate(curves.backbones.items()):
        xs: list[Any] = []
        ys: list[Any] = []
        text: list[Any] = []
        for trial in trials:
            for x, y in trial.points:
                xs.append(x)
                ys.append(y)
                text.append(f"trial {trial.number} ({trial.state.lower()})")
            xs.append(None)
            ys.append(None)
            text.append(None)
        data.append({"type": "scatter", "mode": "lines+markers", "name": escape(backbone), "x": xs, "y": ys,
                     "text": text, "connectgaps": False, "line": {"color": _colour(i), "width": 1}, "opacity": opacity,
                     "marker": {"size": 4, "color": _colour(i)},
                     "hovertemplate": "%{text}<br>epoch %{x:.2f}: %{y:.4f}<extra>%{fullData.name}</extra>"})
    stops = curves.pruned
    data.append({"type": "scatter", "mode": "markers", "name": "pruned here", "x": [s.x for s in stops],
                 "y": [s.y for s in stops], "text": [f"trial {s.number} pruned" for s in stops],
                 "marker": {"symbol": "x", "size": 10, "color": "#e63946"},
                 "hovertemplate": "%{text}<br>epoch %{x:.2f}: %{y:.4f}<extra></extra>"})
    return {"data": data, "layout": _layout("Learning curves", "epochs trained", escape(metric))}


def draw_pruning_savings(savings: PruningSavings) -> Figure:
    numbers, cumulative = savings.numbers, savings.cumulative
    hours = {k: [v / 3600 for v in cumulative[k]] for k in ("seconds", "seconds_planned")}
    data = [
        {"type": "scatter", "mode": "lines", "name": "epochs run", "x": numbers, "y": cumulative["epochs"],
         "line": {"color": "#2a9d8f"}},
        {"type": "scatter", "mode": "lines", "name": "epochs without pruning", "x": numbers,
         "y": cumulative["epochs_planned"], "line": {"color": "#2a9d8f", "dash": "dash"}},
        {"type": "scatter", "mode": "lines", "name": "compute hours run", "x": numbers, "y": hours["seconds"],
         "xaxis": "x2", "yaxis": "y2", "line": {"color": "#e76f51"}},
        {"type": "scatter", "mode": "lines", "name": "compute hours without pruning (estimate)", "x": numbers,
         "y": hours["seconds_planned"], "xaxis": "x2", "yaxis": "y2", "line": {"color": "#e76f51", "dash": "dash"}},
    ]
    layout = _layout("Pruning savings (cumulative)", "trial", "epochs",
                     xaxis={"domain": [0, 0.45]}, xaxis2={"domain": [0.55, 1], "title": {"text": "trial"},
                                                          "anchor": "y2"},
                     yaxis2={"anchor": "x2", "title": {"text": "compute hours"}})
    return {"data": data, "layout": layout}


def draw_lr_finder(curves: Sequence[FinderCurve]) -> Figure:
    data = []
    for i, curve in enumerate(curves):
        label = f"{curve.backbone} | batch {curve.batch_size}"
        colour = _colour(i)
        data.append({"type": "scatter", "mode": "lines", "name": escape(label), "x": curve.lr, "y": curve.loss,
                     "line": {"color": colour}, "legendgroup": str(i)})
        suggestion = curve.suggestion
        sx = [suggestion] if suggestion is not None else []
        sy = [loss_at(curve.lr, curve.loss, suggestion)] if suggestion is not None else []
        verdict = "reliable" if curve.reliable else "unreliable"
        data.append({"type": "scatter", "mode": "markers", "name": f"suggestion ({verdict})", "x": sx, "y": sy,
                     "legendgroup": str(i), "text": [escape(f"{verdict}: {curve.reason}")] * len(sx),
                     "marker": {"symbol": "star" if curve.reliable else "star-open", "size": 14, "color": colour},
                     "hovertemplate": "suggestion %{x:.3g}<br>%{text}<extra></extra>"})
        used = curve.used
        data.append({"type": "scatter", "mode": "markers", "name": "learning rates used", "legendgroup": str(i),
                     "x": [u.lr for u in used], "y": [loss_at(curve.lr, curve.loss, u.lr) for u in used],
                     "text": [escape(f"trial {u.number} ({u.state.lower()}, {u.how})") for u in used],
                     "marker": {"symbol": "circle-open", "size": 9, "color": colour},
                     "hovertemplate": "%{text}<br>lr %{x:.3g}<extra></extra>"})
    return {"data": data, "layout": _layout("Learning-rate finder", "learning rate", "smoothed loss",
                                            xaxis={"type": "log"})}


def draw_choice_box(groups: Mapping[str, list[float]], title: str, axis: str, metric: str) -> Figure:
    data = [{"type": "box", "name": escape(name), "y": values, "boxpoints": "all", "jitter": 0.4, "pointpos": 0,
             "marker": {"color": _colour(i), "size": 5}} for i, (name, values) in enumerate(groups.items())]
    return {"data": data, "layout": _layout(title, axis, escape(metric), showlegend=False)}


def draw_cost(cost: Mapping[str, list[CostPoint]], metric: str) -> Figure:
    data = [{"type": "scatter", "mode": "markers", "name": escape(backbone), "x": [p.seconds / 60 for p in points],
             "y": [p.value for p in points], "text": [f"trial {p.number}, batch {escape(p.batch_size)}"
                                                      for p in points],
             "marker": {"color": _colour(i), "size": 8},
             "hovertemplate": "%{text}<br>%{x:.1f} min: %{y:.4f}<extra>%{fullData.name}</extra>"}
            for i, (backbone, points) in enumerate(cost.items())]
    return {"data": data, "layout": _layout("Quality against cost", "wall time per trial (minutes)", escape(metric))}


def draw_parallel(parallel: Parallel, metric: str) -> Figure:
    dimensions = []
    for dim in parallel.dimensions:
        label = escape(dim.name + (" (log10)" if dim.log else ""))
        spec: dict[str, Any] = {"label": label, "values": dim.values}
        if dim.labels is not None:
            spec["tickvals"] = list(range(len(dim.labels)))
            spec["ticktext"] = [escape(label) for label in dim.labels]
        dimensions.append(spec)
    dimensions.append({"label": escape(metric), "values": parallel.values})
    trace = {"type": "parcoords", "dimensions": dimensions,
             "line": {"color": parallel.values, "colorscale": "Viridis", "showscale": True}}
    return {"data": [trace], "layout": {"title": {"text": "Parallel coordinates (complete trials)"}, "height": 440,
                                        "margin": {"t": 90, "r": 60, "l": 80, "b": 40}}}


def draw_importances(importances: Mapping[str, float]) -> Figure:
    ranked = sorted(importances.items(), key=lambda kv: kv[1])
    return {"data": [{"type": "bar", "orientation": "h", "name": "PED-ANOVA", "x": [v for _, v in ranked],
                      "y": [escape(k) for k, _ in ranked], "marker": {"color": "#457b9d"}}],
            "layout": _layout("Parameter importances (PED-ANOVA)", "importance", "", showlegend=False,
                              height=max(260, 60 + 40 * len(ranked)))}


def draw_timeline(timeline: Timeline) -> Figure:
    by_state: dict[str, list[Bar]] = defaultdict(list)
    for bar in timeline.bars:
        by_state[bar.state].append(bar)
    data = []
    for state in sorted(by_state, key=lambda s: list(STATE_COLOURS).index(s) if s in STATE_COLOURS else 99):
        bars = by_state[state]
        marker: dict[str, Any] = {"color": STATE_COLOURS.get(state, "#999999")}
        if state.startswith("FAIL ("):
            marker["pattern"] = {"shape": "/", "fillmode": "overlay", "fgcolor": "#ffffff", "fgopacity": 0.8}
        text = []
        for bar in bars:
            words = f"trial {bar.number}: {state.lower()}"
            if bar.value is not None and finite(bar.value):
                words += f", {bar.value:.4f}"
            if bar.retry_of is not None:
                words += f", retry of {bar.retry_of}"
            if bar.resumed_step:
                words += f", resumed at step {bar.resumed_step}"
            if bar.fail_reason:
                words += f"<br>{escape(str(bar.fail_reason)[:200])}"
            text.append(words)
        data.append({"type": "bar", "orientation": "h", "name": escape(state), "y": [escape(b.lane) for b in bars],
                     "base": [_iso(b.start) for b in bars],
                     "x": [max(1.0, (b.end - b.start).total_seconds() * 1000) for b in bars],
                     "text": text, "hovertemplate": "%{text}<extra></extra>", "textposition": "none",
                     "marker": marker})
    links = timeline.links
    if links:
        xs: list[Any] = []
        ys: list[Any] = []
        for link in links:
            xs += [_iso(link.from_time), _iso(link.to_time), None]
            ys += [escape(link.from_lane), escape(link.to_lane), None]
        data.append({"type": "scatter", "mode": "lines+markers", "name": "retry of", "x": xs, "y": ys,
                     "line": {"dash": "dot", "color": "#000000"}, "marker": {"symbol": "arrow", "angleref": "previous",
                                                                            "size": 10}, "hoverinfo": "skip"})
    lanes = [escape(lane) for lane in timeline.lanes]
    return {"data": data, "layout": _layout(
        "Worker timeline", "time", "worker", barmode="overlay", xaxis={"type": "date"},
        yaxis={"type": "category", "categoryorder": "array", "categoryarray": lanes, "automargin": True},
        height=max(260, 120 + 40 * len(lanes)))}


def _iso(moment: datetime) -> str:
    return moment.isoformat(sep=" ", timespec="milliseconds")


def draw_compare(studies: Sequence[StudyComparison]) -> list[Figure]:
    by_trial = [{"type": "scatter", "mode": "lines", "name": escape(s.study), "line": {"shape": "hv"},
                 "x": [p[0] for p in s.best_by_trial], "y": [p[1] for p in s.best_by_trial]} for s in studies]
    by_compute = [{"type": "scatter", "mode": "lines", "name": escape(s.study), "line": {"shape": "hv"},
                   "x": [p[0] for p in s.best_by_compute_h], "y": [p[1] for p in s.best_by_compute_h]}
                  for s in studies]
    states = sorted({state for s in studies for state in s.states},
                    key=lambda s: list(STATE_COLOURS).index(s) if s in STATE_COLOURS else 99)
    bars = [{"type": "bar", "name": state, "x": [escape(s.study) for s in studies],
             "y": [s.states.get(state, 0) for s in studies], "marker": {"color": STATE_COLOURS.get(state)}}
            for state in states]
    return [
        {"data": by_trial, "layout": _layout("Best so far, by trial", "trial", "best value")},
        {"data": by_compute, "layout": _layout("Best so far, by compute", "compute hours", "best value")},
        {"data": bars, "layout": _layout("Trial states", "study", "trials", barmode="stack")},
    ]
