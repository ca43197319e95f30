"""Head-to-head: does `tuner` find a better sentence-ordering model for less CPU time than the tools its users
would pick instead?

    python -m bench.head_to_head [--quick] [--fresh] [--systems tuner optuna ...] [--seeds 0 1 2] [--budget S]
                                 [--reuse RESULTS.json]
    make bench-h2h            # the full run (make bench-h2h-quick: --quick)

Four systems search the same task under the same CPU-time budget, one at a time, each (system, seed)
cell in a process of its own (``bench/h2h_systems.py``):

- ``hf``: Hugging Face ``Trainer.hyperparameter_search``, Optuna backend. It cannot search the backbone
  (transformers #19397), so one search per backbone, each with an equal share of the budget.
- ``optuna``: plain Optuna + optuna-integration as the optuna-examples Lightning example writes it.
- ``random``: random search without pruning, the floor.
- ``tuner``: ``tuner run`` with its defaults.

:data:`SETTINGS` says exactly what each got. They share the data (a fixed subset of NIPS, written once),
the model and head (tuner's ``SentenceOrderer``), tuner's collate (dynamic padding, length buckets), the
backbone choices, batch sizes, learning-rate range, maximum epochs, the precision
``tuner.hardware.best_precision`` picks, the torch threads, and the budget.

The clock is the cell process's CPU time (``time.process_time()``: all its threads), from the end of its
imports; the budget ends the process wherever it is. Every validation is recorded with its CPU time, so
each cell has an anytime curve: the best validation tau so far against CPU seconds. The weights of the
cell's best validation are then tested on the test split.

Each cell is written to the results file as it finishes; a run that was stopped resumes with the
cells still missing (``--fresh`` starts over). ``--reuse`` takes the finished cells of another results file
for the systems whose settings it has unchanged, from the same mode and sizing on a machine that reads the
same: after a change to tuner's defaults only tuner's cells run again. Results: ``bench/results/head_to_head.json``
(``head_to_head_quick.json`` with ``--quick``), the curves as ``.png`` and ``.html`` beside it, and a section of
``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench._common import RESULTS, ROOT, machine, replace_section, require_shared

SYSTEMS = ("hf", "optuna", "random", "tuner")
NAMES = {"hf": "HF Trainer.hyperparameter_search", "optuna": "Optuna + Lightning example", "random": "random search",
         "tuner": "tuner (defaults)"}
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TARGET_SHARE = 0.9  # "compute to a target": CPU seconds to 0.9 x the best validation tau any system found
PRECISION_NOTE = ("every system trains in tuner.hardware.best_precision() (bf16-mixed on a CPU with native bf16, "
                  "fp32 on one without)")

# What each system gets, beyond the shared task. Their own documented defaults unless said.
SETTINGS = {
    "hf": ("Trainer.hyperparameter_search(backend='optuna', direction='maximize', hp_space: learning_rate "
           "log-uniform, per_device_train_batch_size categorical; compute_objective = eval_kendall_tau; model_init); "
           "kwargs sampler=TPESampler(seed) (Optuna's default sampler, seeded), pruner: create_study's default "
           "(MedianPruner()), in-memory storage; one search per backbone, budget split evenly. TrainingArguments: "
           "eval_strategy='epoch' (an evaluation to report and prune on), weight_decay=0.01 and warmup_steps=0.1 "
           "(the recipe tuner's module uses; linear decay and max_grad_norm=1.0 are the defaults), "
           "train_sampling_strategy='group_by_length' (the documented setting for dynamic padding), "
           "per_device_eval_batch_size=16, seed, remove_unused_columns=False (the batches are tensors already), "
           "report_to='none'; the rest default. Tokenised once per search; objective: the last evaluation"),
    "optuna": ("optuna-examples pytorch/pytorch_lightning_simple.py: create_study(direction='maximize', "
               "pruner=MedianPruner()), TPESampler (default options, seeded), in-memory storage; "
               "pl.Trainer(logger=True, "
               "enable_checkpointing=False, max_epochs, accelerator='auto', devices=1, "
               "callbacks=[PyTorchLightningPruningCallback(trial, monitor='val_kendall_tau')]); the module's own "
               "optimiser (AdamW, weight decay 0.01, 10% warm-up, linear decay); no gradient clipping "
               "(Lightning's default); no LR finder; the data tokenised afresh in every trial (no cache); "
               "objective: the last validation's tau"),
    "random": ("as optuna, with RandomSampler(seed) and NopPruner(). With the same seed its trials are optuna's "
               "first ones (TPE samples at random for its first 10 trials, the median pruner waits for 5): the two "
               "differ only where TPE's model and the pruner act"),
    "tuner": ("tuner run on a study file with only the shared task: sampler TPE (seed; tuner's independent, "
              "constant-liar TPE, n_startup_trials=5), pruner median (n_startup_trials=3, else Optuna's defaults), "
              "LR finder in scale mode (100 steps, multiplier [0.03, 1], run only where it costs at most 0.25 of the "
              "trial's training steps), the baseline trial first (lr 5e-5, first backbone and batch size), "
              "tokenisation cached (in the cell's folder, so every cell starts cold), checkpoints, gradient "
              "clipping 1.0; objective: the best validation"),
}


@dataclass(frozen=True)
class Sizing:
    """The data subset, the search space's fixed parts, the budget and the seeds of one mode."""

    train_docs: int
    val_docs: int
    test_docs: int
    budget_cpu_s: float
    seeds: tuple[int, ...]
    max_epochs: int
    backbone_layers: tuple[int, ...]  # MiniLM cuts: 6 is the whole model
    batch_sizes: tuple[int, ...] = (8, 16)
    # Four decades, as a user who does not yet know the rate searches them. Within [1e-5, 2e-4], the range of
    # the first full run, nearly every draw trained, and random search tied plain Optuna: too easy to tell
    # the searches apart. Here rates below ~1e-5 barely move the model in two epochs, and at ~3e-3 the
    # 3-layer cut collapses (tau < 0.1), so a draw can waste a whole trial (BENCHMARKS.md has the trials).
    learning_rate: tuple[float, float] = (1e-6, 1e-2)
    max_length: int = 512

    def backbones(self) -> list[Any]:
        return [MINILM if n == 6 else {"name": MINILM, "config": {"num_hidden_layers": n}}
                for n in self.backbone_layers]


# Sizing at ~1,000 tokens/s of training for MiniLM-L6 in fp32 on a 2-core AVX2 machine, ~2,000 for a 3-layer cut,
# ~180 tokens per NIPS abstract, and CPU time ~1.8x wall time with 2 torch threads (docs/study-files.md, Precision).
# Quick: 4 cells of 300 CPU s (~170 s wall each) + ~40 s each to start, test and, for hf, start twice: ~15 min.
# Full: 12 cells of 700 CPU s (~6.5 min wall each) + ~1 min each: ~90 min, within the 150 asked. The whole
# model is left out, and trials are 2 epochs: on a 2-core AMD EPYC (AVX2) a batch-8 step took 1.6 s with 6
# layers and 0.9 s with 3. The full mode trains on 160 documents, so that a cell fits more than 10 trials
# (a 2-epoch trial on the 3-layer cut at batch 8: ~65 CPU s in fp32 on AVX2, ~42 in bf16-mixed on
# AVX512-BF16), past the 10 random start-up trials of Optuna's TPE and the 5 its
# median pruner waits for: with 320 documents a cell fit 6 to 8 trials, and plain Optuna drew exactly
# random search's trials (BENCHMARKS.md).
QUICK = Sizing(train_docs=160, val_docs=80, test_docs=150, budget_cpu_s=300, seeds=(0,), max_epochs=2,
               backbone_layers=(3, 2))
FULL = Sizing(train_docs=160, val_docs=120, test_docs=377, budget_cpu_s=700, seeds=(0, 1, 2), max_epochs=2,
              backbone_layers=(3, 2))


# --- pure parts: curves, time to a target, summaries, resume, markdown ------------------------------------------

def best_curve(events: Sequence[dict[str, Any]], budget_s: float) -> list[list[float]]:
    """The anytime curve: ``[cpu_s, best tau so far]`` at each validation that raised the best, within the budget."""
    curve: list[list[float]] = []
    for event in sorted(events, key=lambda e: e["cpu_s"]):
        if event["cpu_s"] <= budget_s and (not curve or event["tau"] > curve[-1][1]):
            curve.append([float(event["cpu_s"]), float(event["tau"])])
    return curve


def time_to_reach(curve: Sequence[Sequence[float]], target: float) -> float | None:
    """CPU seconds until the curve's best reached ``target`` (``None``: never)."""
    return next((float(t) for t, tau in curve if tau >= target), None)


def match_fraction(tuner_curve: Sequence[Sequence[float]], peer_curve: Sequence[Sequence[float]]) -> float | None:
    """tuner's CPU time to reach the peer's best validation tau over the peer's own time to reach it
    (``None`` when tuner never reaches it, or the peer found nothing)."""
    if not peer_curve:
        return None
    peer_best = peer_curve[-1][1]
    mine = time_to_reach(tuner_curve, peer_best)
    theirs = time_to_reach(peer_curve, peer_best)
    return None if mine is None or not theirs else mine / theirs


def median_or_none(values: Sequence[float | None]) -> float | None:
    """The median, with ``None`` (never reached) ranked above every number: ``None`` if it is the median."""
    if not values:
        return None
    ranked = sorted(math.inf if v is None else v for v in values)
    middle = statistics.median(ranked)
    return None if math.isinf(middle) or math.isnan(middle) else middle


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Median, min and max of the numbers among ``values``, and how many there were."""
    numbers = [v for v in values if v is not None]
    if not numbers:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(numbers), "min": min(numbers), "max": max(numbers), "n": len(numbers)}


def same_settings(stored: Any, settings: dict[str, Any]) -> bool:
    """Whether a results file's settings are these (as JSON stores them: tuples come back as lists)."""
    return bool(stored == json.loads(json.dumps(settings)))


def reusable_cells(previous: dict[str, Any], settings: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The finished cells of another results file that this run would only repeat: those of the systems whose
    settings are unchanged, from a run of the same mode and sizing, measured on a machine that reads the same
    (CPU, capability, cores, torch and its threads, precision). ``ValueError`` says why none can be."""
    stored, now = previous.get("settings") or {}, json.loads(json.dumps(settings))
    if stored.get("quick") != now["quick"] or stored.get("sizing") != now["sizing"]:
        raise ValueError("it is a run of another mode or sizing")
    keys = ("cpu_model", "cpu_capability", "cores", "torch", "torch_threads", "precision")
    differ = [key for key in keys if (previous.get("machine") or {}).get(key) != record.get(key)]
    if differ:
        raise ValueError(f"it ran on another machine ({', '.join(differ)} differ)")
    same = {system for system in now["systems"] if (stored.get("peers") or {}).get(system) == now["peers"][system]}
    return {key: cell for key, cell in (previous.get("cells") or {}).items() if key.split("/")[0] in same}


def cell_key(system: str, seed: int) -> str:
    return f"{system}/{seed}"


def pending_cells(done: dict[str, Any], systems: Sequence[str], seeds: Sequence[int]) -> list[tuple[str, int]]:
    """The cells still to run, seed by seed (a stopped run leaves whole seeds behind it), skipping finished ones."""
    return [(system, seed) for seed in seeds for system in systems if cell_key(system, seed) not in done]


def summarize(cells: dict[str, Any], systems: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """The headline figures from the finished cells."""
    found = {key: cell for key, cell in cells.items() if cell.get("curve")}
    overall = max((cell["curve"][-1][1] for cell in found.values()), default=None)
    target = None if overall is None else TARGET_SHARE * overall
    per_system: dict[str, Any] = {}
    for system in systems:
        mine = [cells[cell_key(system, s)] for s in seeds if cell_key(system, s) in cells]
        per_system[system] = {
            "seeds": len(mine),
            "best_val_kendall_tau": spread([c["curve"][-1][1] if c.get("curve") else None for c in mine]),
            "test_kendall_tau": spread([c.get("test", {}).get("kendall_tau") for c in mine]),
            "test_pmr": spread([c.get("test", {}).get("pmr") for c in mine]),
            "cpu_s_to_target": [None if target is None else time_to_reach(c.get("curve", []), target) for c in mine],
            "trials": spread([c.get("trials") for c in mine]),
        }
        per_system[system]["cpu_s_to_target_median"] = median_or_none(per_system[system]["cpu_s_to_target"])
    summary: dict[str, Any] = {"target_val_kendall_tau": target, "systems": per_system,
                               "test_kendall_tau": {s: per_system[s]["test_kendall_tau"]["median"] for s in systems}}
    for peer in ("hf", "optuna"):
        fractions = {str(s): match_fraction(cells[cell_key("tuner", s)].get("curve", []),
                                            cells[cell_key(peer, s)].get("curve", []))
                     for s in seeds if cell_key("tuner", s) in cells and cell_key(peer, s) in cells}
        summary[f"time_fraction_to_match_{peer}"] = median_or_none(list(fractions.values())) if fractions else None
        summary[f"time_fraction_to_match_{peer}_per_seed"] = fractions
        never = [s for s, f in fractions.items() if f is None]
        summary[f"time_fraction_to_match_{peer}_note"] = (
            f"tuner never reached {NAMES[peer]}'s best validation tau with seed(s) {', '.join(never)}; "
            "such a seed ranks above every number in the median" if never else None)
    return summary


def _figure(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _range(stats: dict[str, Any], digits: int = 3) -> str:
    if stats["median"] is None:
        return "n/a"
    if stats["n"] == 1:
        return _figure(stats["median"], digits)
    return f"{_figure(stats['median'], digits)} [{_figure(stats['min'], digits)}, {_figure(stats['max'], digits)}]"


def render_markdown(results: dict[str, Any]) -> str:
    """The ``BENCHMARKS.md`` section of a results file: settings, a table per system, the time fractions."""
    summary, sizing, systems = results["summary"], results["settings"]["sizing"], results["settings"]["systems"]
    machine_line = results["machine"].get("summary", results["machine"].get("cpu_model", "?"))
    lines = [
        f"### Head-to-head{' (quick)' if results['settings']['quick'] else ''}",
        "",
        f"`{results['command']}` on {machine_line}, precision {results['machine'].get('precision', '?')}; "
        f"{len(sizing['seeds'])} seed(s), a budget of {sizing['budget_cpu_s']:g} CPU seconds per (system, seed). "
        f"NIPS subset: {sizing['train_docs']} train, {sizing['val_docs']} validation, {sizing['test_docs']} test "
        f"documents; MiniLM with {' or '.join(str(n) for n in sizing['backbone_layers'])} layers, batch size "
        f"{' or '.join(str(b) for b in sizing['batch_sizes'])}, learning rate {sizing['learning_rate'][0]:g} to "
        f"{sizing['learning_rate'][1]:g}, {sizing['max_epochs']} epoch(s) at most. Median [min, max] over seeds.",
        "",
        "| system | best validation tau | test tau | test PMR | CPU s to validation tau "
        f"{_figure(summary['target_val_kendall_tau'])} (0.9 x best) | trials |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for system in systems:
        row = summary["systems"][system]
        reached = row["cpu_s_to_target"]
        misses = sum(t is None for t in reached)
        to_target = _figure(row["cpu_s_to_target_median"], 0)
        if misses:
            to_target += f" ({misses} of {len(reached)} never)"
        lines.append(f"| {NAMES[system]} | {_range(row['best_val_kendall_tau'])} | {_range(row['test_kendall_tau'])} | "
                     f"{_range(row['test_pmr'])} | {to_target} | {_range(row['trials'], 0)} |")
    lines.append("")
    sources: dict[str, list[str]] = {}
    for key, cell in sorted(results.get("cells", {}).items()):
        if cell.get("reused_from"):
            sources.setdefault(cell["reused_from"], []).append(key)
    for source, keys in sources.items():
        lines += [f"Taken from `{source}`, a run with the same settings for these systems, the same sizing and a "
                  f"machine that reads the same (`--reuse`): the cells {', '.join(keys)}.", ""]
    for peer in ("hf", "optuna"):
        if peer not in systems or "tuner" not in systems:
            continue
        value = summary[f"time_fraction_to_match_{peer}"]
        per_seed = ", ".join(f"seed {s}: {_figure(f, 2)}" for s, f in summary[f"time_fraction_to_match_{peer}_per_seed"]
                             .items())
        text = (f"**{_figure(value, 2)}**" if value is not None
                else "**null**: tuner did not reach its best validation tau in most seeds")
        lines.append(f"- `time_fraction_to_match_{peer}` (tuner's CPU time to reach {NAMES[peer]}'s best "
                     f"validation tau / its own, median; target <= 0.33): {text} ({per_seed or 'no seed'})")
        if summary[f"time_fraction_to_match_{peer}_note"]:
            lines.append(f"  - {summary[f'time_fraction_to_match_{peer}_note']}")
    lines += ["", "What each system got:", ""]
    lines += [f"- **{NAMES[s]}**: {results['settings']['peers'][s]}" for s in systems]
    lines += ["", f"Measured, not adjusted: {PRECISION_NOTE}; the clock is each cell process's CPU time after its "
              "imports, and the budget ends the process wherever it is.", "",
              f"![anytime curves](bench/results/{Path(results['output']).stem}.png)", "",
              f"The interactive plot, `bench/results/{Path(results['output']).stem}.html`, is written beside the "
              "results too (too large to keep in git; the curves are in the results file as well).", ""]
    return "\n".join(lines)


def curves_html(results: dict[str, Any]) -> str:
    """A self-contained plotly page of every cell's anytime curve."""
    import plotly.graph_objects as go

    figure = go.Figure()
    colours = {"hf": "#ff7f0e", "optuna": "#1f77b4", "random": "#7f7f7f", "tuner": "#2ca02c"}
    budget = results["settings"]["sizing"]["budget_cpu_s"]
    for key, cell in sorted(results.get("cells", {}).items()):
        curve = cell.get("curve") or []
        if not curve:
            continue
        system, seed = key.split("/")
        xs = [t for t, _ in curve] + [budget]
        ys = [tau for _, tau in curve] + [curve[-1][1]]
        figure.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", line_shape="hv", legendgroup=system,
                                    name=f"{NAMES[system]} seed {seed}", line={"color": colours.get(system)}))
    figure.update_layout(title="Best validation Kendall's tau against CPU seconds", xaxis_title="CPU seconds",
                         yaxis_title="best validation tau so far", template="plotly_white")
    return str(figure.to_html(include_plotlyjs=True, full_html=True))


def curves_png(results: dict[str, Any], path: Path) -> None:
    """The same curves as :func:`curves_html`, as a PNG (matplotlib, no browser needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"hf": "#ff7f0e", "optuna": "#1f77b4", "random": "#7f7f7f", "tuner": "#2ca02c"}
    budget = results["settings"]["sizing"]["budget_cpu_s"]
    figure, axes = plt.subplots(figsize=(9, 5.5), dpi=120)
    labelled: set[str] = set()
    for key, cell in sorted(results.get("cells", {}).items()):
        curve = cell.get("curve") or []
        if not curve:
            continue
        system = key.split("/")[0]
        xs = [t for t, _ in curve] + [budget]
        ys = [tau for _, tau in curve] + [curve[-1][1]]
        axes.step(xs, ys, where="post", color=colours.get(system), alpha=0.8, marker="o", markersize=3,
                  label=None if system in labelled else NAMES[system])
        labelled.add(system)
    axes.set(title="Best validation Kendall's tau against CPU seconds (one line per seed)", xlabel="CPU seconds",
             ylabel="best validation tau so far", xlim=(0, budget))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


# --- running the cells -------------------------------------------------------------------------------------------

def write_subset(nips: Path, folder: Path, sizing: Sizing) -> dict[str, str]:
    """The first N documents of each NIPS split, written once: every system reads these files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    parts = (("train", "train.lower", sizing.train_docs), ("validation", "val.lower", sizing.val_docs),
             ("test", "test.lower", sizing.test_docs))
    for split, source, count in parts:
        lines = (nips / source).read_text(encoding="utf-8").splitlines()[:count]
        path = folder / source
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths[split] = str(path)
    return paths


def _child(spec: dict[str, Any], folder: Path, name: str, timeout_s: float) -> float:
    """Run one ``bench.h2h_systems`` process; returns its wall seconds."""
    path = folder / f"{name}.json"
    path.write_text(json.dumps(spec, indent=2))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    with (folder / f"{name}.log").open("w") as log:
        done = subprocess.run([sys.executable, "-m", "bench.h2h_systems", str(path)], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s, check=False)
    if done.returncode != 0:
        tail = (folder / f"{name}.log").read_text().strip().splitlines()[-5:]
        raise RuntimeError(f"{name} exited with status {done.returncode}; {folder / (name + '.log')} ends:\n"
                           + "\n".join(tail))
    return time.perf_counter() - started


def run_cell(system: str, seed: int, sizing: Sizing, data: dict[str, str], folder: Path) -> dict[str, Any]:
    """One (system, seed) cell: its search(es) within the budget, then the test of its best weights."""
    from bench.h2h_systems import read_events

    shutil.rmtree(folder, ignore_errors=True)  # a cell cut short by a stopped run starts over
    folder.mkdir(parents=True)
    base = {"system": system, "seed": seed, "folder": str(folder), "data": data, "backbones": sizing.backbones(),
            "batch_sizes": list(sizing.batch_sizes), "learning_rate": list(sizing.learning_rate),
            "max_epochs": sizing.max_epochs, "max_length": sizing.max_length}
    # a cell stuck without using CPU (it should never be) is stopped at 3x its budget in wall time, plus start-up
    guard = 3 * sizing.budget_cpu_s + 600
    wall = 0.0
    if system == "hf":  # one search per backbone, an even share of the budget each, on one clock
        share = sizing.budget_cpu_s / len(sizing.backbones())
        for part, backbone in enumerate(sizing.backbones()):
            spent = max((e["cpu_s"] for e in _all_lines(folder / "events.jsonl")), default=0.0)
            spec = {**base, "mode": "search", "part": part, "backbone": backbone, "offset": spent,
                    "budget_s": share * (part + 1)}
            wall += _child(spec, folder, f"search-{part}", guard)
    else:
        wall += _child({**base, "mode": "search", "budget_s": sizing.budget_cpu_s}, folder, "search", guard)
    events = read_events(folder / "events.jsonl")
    test_wall = _child({**base, "mode": "test"}, folder, "test", guard)
    test = json.loads((folder / "test.json").read_text())
    curve = best_curve(events, sizing.budget_cpu_s)
    return {
        "curve": curve, "validations": len(events), "trials": len({e["trial"] for e in events}),
        "best": max(events, key=lambda e: e["tau"]) if events else None, "test": test,
        "search_wall_s": wall, "test_wall_s": test_wall,
        "cpu_s_used": max((e["cpu_s"] for e in _all_lines(folder / "events.jsonl")), default=None),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _all_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    found = []
    for line in path.read_text().splitlines():
        try:
            found.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return found


def _write(path: Path, results: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


def _sizing(args: argparse.Namespace) -> Sizing:
    sizing = QUICK if args.quick else FULL
    changes = {k: v for k, v in {"budget_cpu_s": args.budget, "train_docs": args.train_docs, "val_docs": args.val_docs,
                                 "test_docs": args.test_docs, "max_epochs": args.max_epochs}.items() if v is not None}
    if args.seeds is not None:
        changes["seeds"] = tuple(args.seeds)
    return replace(sizing, **changes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, a smaller subset and budget (~15 min)")
    parser.add_argument("--fresh", action="store_true", help="start over rather than resume the results file")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--budget", type=float, help="CPU seconds per (system, seed)")
    parser.add_argument("--train-docs", type=int)
    parser.add_argument("--val-docs", type=int)
    parser.add_argument("--test-docs", type=int)
    parser.add_argument("--max-epochs", type=int)
    parser.add_argument("--output", help="results file name in bench/results/ (default head_to_head[_quick].json)")
    parser.add_argument("--no-markdown", action="store_true", help="leave BENCHMARKS.md alone")
    parser.add_argument("--reuse", metavar="RESULTS", help="a results file in bench/results/ whose finished cells "
                        "this run takes for the systems whose settings are unchanged")
    args = parser.parse_args()
    sizing = _sizing(args)
    output = RESULTS / (args.output or ("head_to_head_quick.json" if args.quick else "head_to_head.json"))
    work = ROOT / "runs" / "head_to_head" / output.stem
    data = write_subset(require_shared("nips_abstracts"), work / "data", sizing)
    settings = {"quick": args.quick, "sizing": asdict(sizing), "systems": list(args.systems), "peers": SETTINGS}
    results: dict[str, Any] = {}
    if output.is_file() and not args.fresh:
        results = json.loads(output.read_text())
        if not same_settings(results.get("settings"), settings):
            sys.exit(f"{output} holds a run with other settings; rerun with --fresh to start over, or --output NAME")
        print(f"resuming {output}: {len(results['cells'])} cell(s) done")
    command = "python -m bench.head_to_head" + " ".join([""] + sys.argv[1:])
    record = machine()
    from tuner import hardware

    record["summary"] = hardware.summary(record)
    results = {"settings": settings, "cells": results.get("cells", {}), "machine": record, "command": command,
               "output": str(output.relative_to(ROOT))}
    if args.reuse:
        source = RESULTS / args.reuse
        try:
            reused = reusable_cells(json.loads(source.read_text()), settings, record)
        except (OSError, ValueError) as err:
            sys.exit(f"--reuse {source}: {err}")
        reused = {key: cell for key, cell in reused.items() if key not in results["cells"]}
        for key, cell in reused.items():
            results["cells"][key] = {**cell, "reused_from": str(source.relative_to(ROOT))}
        print(f"reusing {len(reused)} cell(s) from {source}: {', '.join(sorted(reused)) or 'none'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    for system, seed in pending_cells(results["cells"], args.systems, sizing.seeds):
        print(f"{NAMES[system]}, seed {seed}: {sizing.budget_cpu_s:g} CPU s ...", flush=True)
        cell = run_cell(system, seed, sizing, data, work / f"{system}-{seed}")
        results["cells"][cell_key(system, seed)] = cell
        results["summary"] = summarize(results["cells"], args.systems, sizing.seeds)
        _write(output, results)
        best = _figure(cell["curve"][-1][1] if cell["curve"] else None)
        print(f"  best validation tau {best} after {cell['trials']} trial(s) ({cell['validations']} validations), "
              f"test tau {_figure(cell['test'].get('kendall_tau'))}; {cell['search_wall_s']:.0f} s wall searching, "
              f"{cell['test_wall_s']:.0f} s testing", flush=True)
    results["summary"] = summarize(results["cells"], args.systems, sizing.seeds)
    _write(output, results)
    output.with_suffix(".html").write_text(curves_html(results))
    curves_png(results, output.with_suffix(".png"))
    section = render_markdown(results)
    print(section)
    if not args.no_markdown:
        benchmarks = ROOT / "BENCHMARKS.md"
        text = benchmarks.read_text() if benchmarks.is_file() else "# Benchmarks\n"
        benchmarks.write_text(replace_section(text, output.stem, section))
        print(f"wrote {benchmarks}")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
