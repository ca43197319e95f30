"""Head-to-head: does `tuner` find a better sentence-ordering model for less CPU time than the tools its users
would pick instead?

    python -m bench.head_to_head [--quick] [--fresh] [--systems tuner optuna ...] [--seeds 0 1 2] [--budget S]
                                 [--reuse RESULTS.json]
    make bench-h2h            # the full run (make bench-h2h-quick: --quick)

Four systems search the same task under the same CPU-time budget, one at a time, each (system, seed)
cell in a process of its own (``bench/h2h_systems.py``):

- ``hf``: Hugging Face ``Trainer.hyperparameter_search``, Optuna backend, the backbone chosen in
  ``model_init(trial)`` (it is not a ``TrainingArguments`` field, transformers #19397). Backbones with
  different tokenizers cannot share its tokenised data set: then one search per backbone, each with an
  equal share of the budget and a sampler seed of its own.
- ``optuna``: plain Optuna + optuna-integration as the optuna-examples Lightning example writes it.
- ``random``: random search without pruning, the floor.
- ``tuner``: ``tuner run`` with its defaults.

:data:`SETTINGS` says exactly what each got. They share the data (a fixed subset of NIPS, written once),
the model and head (tuner's ``SentenceOrderer``) and its training recipe (AdamW, weight decay 0.01, 10%
warm-up, linear decay, gradients clipped at norm 1.0), tuner's collate (dynamic padding, length buckets),
the backbone choices, batch sizes, learning-rate range, maximum epochs, the precision
``tuner.hardware.best_precision`` picks, the torch threads, and the budget. Each cell has its own sampler
seed and training seed, drawn from (system, seed): two systems never share a sampler's draws.

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
import hashlib
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
from tuner.config.schema import LRFinderConfig
from tuner.hpo.search import TPE_STARTUP_TRIALS

SYSTEMS = ("hf", "optuna", "random", "tuner")
NAMES = {"hf": "HF Trainer.hyperparameter_search", "optuna": "Optuna + Lightning example", "random": "random search",
         "tuner": "tuner (defaults)"}
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TARGET_GAP = 0.01  # the target: within 0.01 of the best median (over seeds) validation tau of any system
FINDER = LRFinderConfig()  # tuner's default LR finder
PRECISION_NOTE = ("every system trains in tuner.hardware.best_precision() (bf16-mixed on a CPU with native bf16, "
                  "fp32 on one without)")

# What each system gets, beyond the shared task. Their own documented defaults unless said.
SETTINGS = {
    "hf": ("Trainer.hyperparameter_search(backend='optuna', direction='maximize', hp_space: learning_rate "
           "log-uniform, per_device_train_batch_size categorical; model_init(trial) draws the backbone; "
           "compute_objective = eval_kendall_tau; kwargs sampler=TPESampler(seed) (Optuna's default sampler, "
           "seeded), pruner: create_study's default (MedianPruner()), in-memory storage; one search over every "
           "backbone (one per backbone, budget split evenly, where their tokenizers differ). TrainingArguments: "
           "eval_strategy='epoch' (an evaluation to report and prune on), weight_decay=0.01 and warmup_steps=0.1 "
           "(the recipe tuner's module uses; linear decay and max_grad_norm=1.0 are the defaults), "
           "train_sampling_strategy='group_by_length' (the documented setting for dynamic padding), "
           "per_device_eval_batch_size=16, seed, remove_unused_columns=False (the batches are tensors already), "
           "report_to='none'; the rest default. Tokenised once per search; objective: the last evaluation"),
    "optuna": ("optuna-examples pytorch/pytorch_lightning_simple.py: create_study(direction='maximize', "
               "pruner=MedianPruner()), TPESampler (default options, seeded), in-memory storage; "
               "pl.Trainer(logger=True, "
               "enable_checkpointing=False, max_epochs, accelerator='auto', devices=1, gradient_clip_val=1.0 "
               "(the shared recipe), callbacks=[PyTorchLightningPruningCallback(trial, monitor='val_kendall_tau')]); "
               "the module's own optimiser (AdamW, weight decay 0.01, 10% warm-up, linear decay); no LR finder; "
               "the data tokenised afresh in every trial (no cache); objective: the last validation's tau"),
    "random": "as optuna, with RandomSampler(seed) and NopPruner()",
    "tuner": ("tuner run on a study file with only the shared task, every other setting its default: sampler TPE "
              f"(seed; tuner's independent, constant-liar TPE, n_startup_trials={TPE_STARTUP_TRIALS}), pruner "
              "Hyperband (Optuna's defaults), LR finder in scale mode with one study-wide curve "
              f"({FINDER.num_training} steps, multiplier {list(FINDER.multiplier)}, run only "
              f"where it costs at most {FINDER.max_cost:g}x the trial's training steps, so never on the default "
              "sizing's 20 to 40 steps a trial), the baseline trial first (first backbone and batch size, at the "
              "finder's suggestion times the middle of the multiplier where it runs, else 5e-5), tokenisation cached "
              "(in the cell's folder, so every cell starts cold), checkpoints, "
              "gradient clipping 1.0; objective: the best validation"),
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
    # four decades, as a user who does not yet know the rate searches them (BENCHMARKS.md#head-to-head)
    learning_rate: tuple[float, float] = (1e-6, 1e-2)
    max_length: int = 512

    def backbones(self) -> list[Any]:
        return [MINILM if n == 6 else {"name": MINILM, "config": {"num_hidden_layers": n}}
                for n in self.backbone_layers]


# Sized so that a full cell fits 20 to 30 two-epoch trials, past Optuna's 10 random start-up trials and the 5 its
# median pruner waits for (BENCHMARKS.md#head-to-head); quick: ~15 min, full: 20 cells, ~2.5 h on 2 cores.
QUICK = Sizing(train_docs=160, val_docs=80, test_docs=150, budget_cpu_s=300, seeds=(0,), max_epochs=2,
               backbone_layers=(3, 2))
FULL = Sizing(train_docs=160, val_docs=120, test_docs=377, budget_cpu_s=700, seeds=(0, 1, 2, 3, 4), max_epochs=2,
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
    differ = machine_differs(previous.get("machine") or {}, record)
    if differ:
        raise ValueError(f"it ran on another machine ({', '.join(differ)} differ)")
    same = {system for system in now["systems"] if (stored.get("peers") or {}).get(system) == now["peers"][system]}
    return {key: cell for key, cell in (previous.get("cells") or {}).items() if key.split("/")[0] in same}


def machine_differs(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What makes two machines' CPU seconds incomparable, among what their records say: the CPU, its capability,
    the cores, torch and its threads, and the precision."""
    keys = ("cpu_model", "cpu_capability", "cores", "torch", "torch_threads", "precision")
    return [key for key in keys if before.get(key) != now.get(key)]


def resume_refused(previous: dict[str, Any], settings: dict[str, Any], record: dict[str, Any]) -> str | None:
    """Why this run cannot go on from a results file's cells, if it cannot: they ran with other settings, or
    on another machine, whose CPU-second budgets are not this one's."""
    if not same_settings(previous.get("settings"), settings):
        return "holds a run with other settings"
    differ = machine_differs(previous.get("machine") or {}, record)
    if differ and previous.get("cells"):
        return f"holds cells measured on another machine ({', '.join(differ)} differ)"
    return None


def cell_key(system: str, seed: int) -> str:
    return f"{system}/{seed}"


def pending_cells(done: dict[str, Any], systems: Sequence[str], seeds: Sequence[int]) -> list[tuple[str, int]]:
    """The cells still to run, seed by seed (a stopped run leaves whole seeds behind it), skipping finished ones."""
    return [(system, seed) for seed in seeds for system in systems if cell_key(system, seed) not in done]


def cell_seeds(system: str, seed: int) -> tuple[int, int]:
    """A cell's sampler seed and training seed, drawn from (system, seed): no two systems share a sampler's
    draws, and every cell trains with seeds of its own."""
    digest = hashlib.sha256(f"{system}/{seed}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 2**31, int.from_bytes(digest[4:8], "big") % 2**31


def summarize(cells: dict[str, Any], systems: Sequence[str], seeds: Sequence[int], budget_s: float) -> dict[str, Any]:
    """The headline figures from the finished cells: per system, the spread over seeds; the compute each cell
    needed to come within :data:`TARGET_GAP` of the best system's median best validation tau (censored at the
    budget); and tuner's paired speed-up over each peer at that target."""
    from bench.replay import paired_speedup

    per_system: dict[str, Any] = {}
    for system in systems:
        mine = [cells[cell_key(system, s)] for s in seeds if cell_key(system, s) in cells]
        per_system[system] = {
            "seeds": len(mine),
            "best_val_kendall_tau": spread([c["curve"][-1][1] if c.get("curve") else None for c in mine]),
            "test_kendall_tau": spread([c.get("test", {}).get("kendall_tau") for c in mine]),
            "test_pmr": spread([c.get("test", {}).get("pmr") for c in mine]),
            "trials": spread([c.get("trials") for c in mine]),
        }
    medians = [row["best_val_kendall_tau"]["median"] for row in per_system.values()]
    best = max((m for m in medians if m is not None), default=None)
    target = None if best is None else best - TARGET_GAP
    reach: dict[str, dict[int, float | None]] = {}
    for system in systems:
        reach[system] = {s: time_to_reach(cells[cell_key(system, s)].get("curve", []), target)
                         for s in seeds if cell_key(system, s) in cells and target is not None}
        row = per_system[system]
        row["cpu_s_to_target"] = list(reach[system].values())
        row["cpu_s_to_target_median"] = (statistics.median(budget_s if v is None else v for v in reach[system].values())
                                         if reach[system] else None)
    speedup = {}
    if "tuner" in systems:
        for peer in (s for s in systems if s != "tuner"):
            paired = [s for s in reach["tuner"] if s in reach[peer]]
            if paired:
                speedup[peer] = paired_speedup([reach["tuner"][s] for s in paired], [reach[peer][s] for s in paired],
                                               budget_s)
    return {"target_val_kendall_tau": target, "systems": per_system, "speedup_tuner_vs": speedup,
            "test_kendall_tau": {s: per_system[s]["test_kendall_tau"]["median"] for s in systems}}


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
    done = [seed for seed in sizing["seeds"] if all(cell_key(system, seed) in results["cells"] for system in systems)]
    seeds = (f"{len(done)} seed(s)" if len(done) == len(sizing["seeds"])
             else f"{len(done)} of {len(sizing['seeds'])} seeds finished (a stopped run; it resumes)")
    lines = [
        f"### Head-to-head{' (quick)' if results['settings']['quick'] else ''}",
        "",
        f"`{results['command']}` on {machine_line}, precision {results['machine'].get('precision', '?')}; "
        f"{seeds}, a budget of {sizing['budget_cpu_s']:g} CPU seconds per (system, seed). "
        f"NIPS subset: {sizing['train_docs']} train, {sizing['val_docs']} validation, {sizing['test_docs']} test "
        f"documents; MiniLM with {' or '.join(str(n) for n in sizing['backbone_layers'])} layers, batch size "
        f"{' or '.join(str(b) for b in sizing['batch_sizes'])}, learning rate {sizing['learning_rate'][0]:g} to "
        f"{sizing['learning_rate'][1]:g}, {sizing['max_epochs']} epoch(s) at most. Median [min, max] over seeds.",
        "",
        "| system | best validation tau | test tau | test PMR | CPU s to validation tau "
        f"{_figure(summary['target_val_kendall_tau'])} (median, a miss counted as the budget) | trials |",
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
    lines += ["", f"The target is the best system's median best validation tau less {TARGET_GAP:g}."]
    sources: dict[str, list[str]] = {}
    for key, cell in sorted(results.get("cells", {}).items()):
        if cell.get("reused_from"):
            sources.setdefault(cell["reused_from"], []).append(key)
    for source, keys in sources.items():
        lines += ["", f"Taken from `{source}`, a run with the same settings for these systems, the same sizing and a "
                  f"machine that reads the same (`--reuse`): the cells {', '.join(keys)}."]
    if summary["speedup_tuner_vs"]:
        lines += ["", "tuner's speed-up to the target over each peer (the median over seeds of the peer's CPU seconds "
                  "over tuner's, a miss counted as the budget; paired Wilcoxon test):", ""]
        for peer, found in summary["speedup_tuner_vs"].items():
            lines.append(f"- {NAMES[peer]}: {found['median_ratio']:.2f}x; tuner faster in {found['faster_in']}, "
                         f"slower in {found['slower_in']} of {found['seeds']} seeds; p = {found['p_value']:.2g}")
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


def hf_parts(backbones: Sequence[Any]) -> list[list[Any]]:
    """HF's searches: one over every backbone when they share a tokenizer (its data set is tokenised once,
    before the search), else one per backbone."""
    names = {b if isinstance(b, str) else b["name"] for b in backbones}
    return [list(backbones)] if len(names) == 1 else [[b] for b in backbones]


def run_cell(system: str, seed: int, sizing: Sizing, data: dict[str, str], folder: Path) -> dict[str, Any]:
    """One (system, seed) cell: its search(es) within the budget, then the test of its best weights."""
    from bench.h2h_systems import read_events

    shutil.rmtree(folder, ignore_errors=True)  # a cell cut short by a stopped run starts over
    folder.mkdir(parents=True)
    sampler_seed, training_seed = cell_seeds(system, seed)
    base = {"system": system, "seed": seed, "sampler_seed": sampler_seed, "training_seed": training_seed,
            "folder": str(folder), "data": data, "backbones": sizing.backbones(),
            "batch_sizes": list(sizing.batch_sizes), "learning_rate": list(sizing.learning_rate),
            "max_epochs": sizing.max_epochs, "max_length": sizing.max_length}
    # a cell stuck without using CPU (it should never be) is stopped at 3x its budget in wall time, plus start-up
    guard = 3 * sizing.budget_cpu_s + 600
    wall = 0.0
    parts = hf_parts(sizing.backbones()) if system == "hf" else [None]
    if len(parts) > 1:  # HF, backbones whose tokenizers differ: one search each, an even share, on one clock
        share = sizing.budget_cpu_s / len(parts)
        for part, backbones in enumerate(parts):
            spent = max((e["cpu_s"] for e in _all_lines(folder / "events.jsonl")), default=0.0)
            spec = {**base, "mode": "search", "part": part, "backbones": backbones, "offset": spent,
                    "sampler_seed": sampler_seed + part, "budget_s": share * (part + 1)}
            wall += _child(spec, folder, f"search-{part}", guard)
    else:
        wall += _child({**base, "mode": "search", "part": 0, "budget_s": sizing.budget_cpu_s}, folder, "search",
                       guard)
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
    parser.add_argument("--summarize", metavar="RESULTS", help="a results file in bench/results/: its summary, "
                        "figure and BENCHMARKS.md section made again from its stored cells, nothing run")
    args = parser.parse_args()
    if args.summarize:
        publish(RESULTS / args.summarize, json.loads((RESULTS / args.summarize).read_text()), args.no_markdown)
        return
    sizing = _sizing(args)
    output = RESULTS / (args.output or ("head_to_head_quick.json" if args.quick else "head_to_head.json"))
    work = ROOT / "runs" / "head_to_head" / output.stem
    data = write_subset(require_shared("nips_abstracts"), work / "data", sizing)
    settings = {"quick": args.quick, "sizing": asdict(sizing), "systems": list(args.systems), "peers": SETTINGS}
    command = "python -m bench.head_to_head" + " ".join([""] + sys.argv[1:])
    record = machine()
    from tuner import hardware

    record["summary"] = hardware.summary(record)
    results: dict[str, Any] = {}
    if output.is_file() and not args.fresh:
        results = json.loads(output.read_text())
        refused = resume_refused(results, settings, record)
        if refused:
            sys.exit(f"{output} {refused}; rerun with --fresh to start over, or --output NAME")
        print(f"resuming {output}: {len(results['cells'])} cell(s) done")
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
        results["summary"] = summarize(results["cells"], args.systems, sizing.seeds, sizing.budget_cpu_s)
        _write(output, results)
        best = _figure(cell["curve"][-1][1] if cell["curve"] else None)
        print(f"  best validation tau {best} after {cell['trials']} trial(s) ({cell['validations']} validations), "
              f"test tau {_figure(cell['test'].get('kendall_tau'))}; {cell['search_wall_s']:.0f} s wall searching, "
              f"{cell['test_wall_s']:.0f} s testing", flush=True)
    publish(output, results, args.no_markdown)


def publish(output: Path, results: dict[str, Any], no_markdown: bool) -> None:
    """The summary of a results file's cells, its figures and its ``BENCHMARKS.md`` section."""
    settings = results["settings"]
    results["summary"] = summarize(results["cells"], settings["systems"], settings["sizing"]["seeds"],
                                   settings["sizing"]["budget_cpu_s"])
    _write(output, results)
    output.with_suffix(".html").write_text(curves_html(results))
    curves_png(results, output.with_suffix(".png"))
    section = render_markdown(results)
    print(section)
    if not no_markdown:
        benchmarks = ROOT / "BENCHMARKS.md"
        text = benchmarks.read_text() if benchmarks.is_file() else "# Benchmarks\n"
        benchmarks.write_text(replace_section(text, output.stem, section))
        print(f"wrote {benchmarks}")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
