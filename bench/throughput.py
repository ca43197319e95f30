"""Training throughput on NIPS: the tuner pipeline against a plain PyTorch loop and a naive padded loop.

    python bench/throughput.py [--steps 20] [--warmup 3] [--rounds 2] [--max-documents N]

Three ways to train the same model (MiniLM-L6, pairwise loss, AdamW, clipping 1.0) on the same batches:

- ``tuner``: ``SentenceOrderingData`` (dynamic padding, length buckets) + ``SentenceOrderer`` + the Lightning
  trainer from ``tuner.training.trainer.build_trainer`` in the precision ``auto`` resolves to on this machine
  (``bf16-mixed`` on a CPU with native bf16, else ``32-true``);
- ``plain``: a hand-written PyTorch loop over the same data loader, in the same precision (bf16 autocast or
  fp32), ``model.loss_fn``;
- ``naive``: the same batches padded to 512 tokens, fp32, and the loss computed document by document.

Throughput is real (unpadded) tokens per second over steady-state steps: the first ``--warmup`` steps are
skipped, and the clock runs from the end of the last warm-up step to the end of the last timed step, so it
holds everything a training loop does between steps (fetching and collating batches, Lightning's hooks)
and nothing of the set-up. Each method runs in its own process (its own peak RSS), and rounds interleave
the methods because the machine is shared; the median round counts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from _common import ROOT, machine, require_shared, write_results

METHODS = ("tuner", "plain", "naive")
TARGETS = {"ratio_vs_plain_torch": 0.95, "speedup_vs_naive": 3.0}
SEED = 0

Batch = dict[str, Any]


# ---------------------------------------------------------------------------------------------------
# One method, in a worker process


class _Clock:
    """Per-step timestamps and token counts; figures cover the steps after the warm-up."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.real: list[int] = []
        self.padded: list[int] = []
        self.losses: list[float] = []

    @property
    def done(self) -> bool:
        return len(self.ends) >= self.warmup + self.steps

    def start(self) -> None:
        self.starts.append(time.perf_counter())

    def end(self, real_tokens: int, padded_tokens: int, loss: float) -> None:
        self.ends.append(time.perf_counter())
        self.real.append(real_tokens)
        self.padded.append(padded_tokens)
        self.losses.append(loss)

    def summary(self) -> dict[str, Any]:
        if not self.done:
            raise RuntimeError(f"only {len(self.ends)} steps ran; {self.warmup} + {self.steps} were asked for")
        timed = range(self.warmup, self.warmup + self.steps)
        wall = self.ends[timed[-1]] - self.ends[self.warmup - 1]
        in_step = sum(self.ends[i] - self.starts[i] for i in timed)
        tokens = sum(self.real[i] for i in timed)
        return {
            "tokens_per_s": tokens / wall,
            "in_step_tokens_per_s": tokens / in_step,
            "wall_s": wall,
            "in_step_s": in_step,
            "real_tokens": tokens,
            "real_tokens_per_step": tokens / self.steps,
            "padded_tokens_per_step": sum(self.padded[i] for i in timed) / self.steps,
            "step_s": [self.ends[i] - self.starts[i] for i in timed],
            "first_loss": self.losses[0],
            "last_loss": self.losses[-1],
        }


def _tokens(batch: Batch) -> int:
    return int(batch["attention_mask"].sum())


def _pad_to(batch: Batch, length: int, pad_id: int) -> Batch:
    """The batch with its token dimension padded to ``length`` (what a static-shape pipeline feeds)."""
    import torch.nn.functional as F

    extra = length - batch["input_ids"].shape[1]
    return {
        **batch,
        "input_ids": F.pad(batch["input_ids"], (0, extra), value=pad_id),
        "attention_mask": F.pad(batch["attention_mask"], (0, extra), value=0),
        "slots": F.pad(batch["slots"], (0, extra), value=-1),
    }


def _pairwise_per_document(scores: Any, gold: Any, mask: Any) -> Any:
    """The pairwise logistic loss of :func:`tuner.model.losses.pairwise_logistic`, one document at a time."""
    import torch
    import torch.nn.functional as F

    losses = []
    for row in range(scores.shape[0]):
        s, g = scores[row][mask[row]].float(), gold[row][mask[row]]
        before = g[:, None] < g[None, :]
        losses.append(F.softplus(s[:, None] - s[None, :])[before].mean())
    return torch.stack(losses).mean()


def _torch_loop(
    model: Any,
    batches: Iterable[Batch],
    clock: _Clock,
    clip: float,
    bf16: bool,
    prepare: Callable[[Batch], Batch],
    loss_fn: Callable[[Any, Any, Any], Any],
) -> None:
    """A hand-written training loop: forward (autocast or fp32), loss, backward, clipping, AdamW step."""
    import torch

    model.train()
    decay = model.hparams["weight_decay"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=model.learning_rate, weight_decay=decay)
    for batch in batches:
        inputs = prepare(batch)
        clock.start()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model.score(inputs), inputs["gold"], inputs["sentence_mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        clock.end(_tokens(batch), inputs["input_ids"].numel(), float(loss))
        if clock.done:
            return


def _lightning_fit(run: Any, data: Any, model: Any, clock: _Clock) -> None:
    """``trainer.fit`` as the pipeline runs it, timed by a callback, without validation."""
    from lightning.pytorch.callbacks import Callback

    from tuner.training.trainer import build_trainer

    class Timer(Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Batch, batch_idx: int) -> None:
            clock.start()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Batch, batch_idx: int) -> None:
            clock.end(_tokens(batch), batch["input_ids"].numel(), float(outputs["loss"]))

    config = dataclasses.replace(
        run.trainer, accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=clock.warmup + clock.steps
    )
    with tempfile.TemporaryDirectory(prefix="tuner-throughput-") as root:
        trainer = build_trainer(config, Path(root), callbacks=[Timer()], logger=False, progress=False)
        # TrainerConfig insists on limit_val_batches > 0 (a study always validates); this bench measures training
        # only. Lightning's default ModelCheckpoint stays: it saves once, at the epoch's end, after the clock stops.
        trainer.limit_val_batches = 0
        trainer.fit(model, datamodule=data)


def _worker(method: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from tuner import hardware
    from tuner.data.module import SentenceOrderingData
    from tuner.model.orderer import SentenceOrderer

    run = _study(args.max_documents)
    data = SentenceOrderingData(run.data, run.model.backbone.name)
    data.setup("fit")
    needed = args.warmup + args.steps
    batches = len(data.train_dataloader())
    if batches < needed:
        sys.exit(f"the train split gives {batches} batches; --warmup {args.warmup} + --steps {args.steps} need "
                 f"{needed} (raise --max-documents or lower --steps)")
    torch.manual_seed(SEED)
    model = SentenceOrderer.from_config(run.model)
    clock = _Clock(args.warmup, args.steps)
    clip = run.trainer.gradient_clip_val
    if method == "tuner":
        _lightning_fit(run, data, model, clock)
    elif method == "plain":
        bf16 = hardware.resolve_precision(run.trainer.precision, "cpu") == "bf16-mixed"
        _torch_loop(model, data.train_dataloader(), clock, clip, bf16, lambda b: b, model.loss_fn)
    else:
        length, pad_id = data.max_length, data.pad_id
        _torch_loop(model, data.train_dataloader(), clock, clip, False, lambda b: _pad_to(b, length, pad_id),
                    _pairwise_per_document)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {**clock.summary(), "peak_rss_mb": peak_kb / 1024, "threads": torch.get_num_threads(),
            "train_documents": len(data.datasets["train"])}


def _study(max_documents: int | None) -> Any:
    from tuner.config.loader import read_study_file

    nips = require_shared("nips_abstracts")
    overrides = [
        f'data.train="{nips / "train.lower"}"',
        f'data.validation="{nips / "val.lower"}"',
        f'data.test="{nips / "test.lower"}"',
        "data.batch_size=16",
        "data.max_sentences=16",
        "data.max_length=512",
        'trainer.precision="auto"',
        "trainer.gradient_clip_val=1.0",
    ]
    if max_documents is not None:
        overrides.append(f"data.max_documents={max_documents}")
    return read_study_file(ROOT / "studies" / "nips.toml", overrides)


# ---------------------------------------------------------------------------------------------------
# Rounds of worker processes, and the report


def _spawn(method: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tuner-throughput-") as folder:
        out = Path(folder) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--worker-output", str(out),
                   "--steps", str(args.steps), "--warmup", str(args.warmup)]
        if args.max_documents is not None:
            command += ["--max-documents", str(args.max_documents)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not out.is_file():
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
            sys.exit(f"the {method} worker failed (exit {done.returncode}): {shlex.join(command)}")
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def _method_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    speeds = [r["tokens_per_s"] for r in rounds]
    return {
        "median_tokens_per_s": statistics.median(speeds),
        "tokens_per_s": speeds,
        "median_in_step_tokens_per_s": statistics.median(r["in_step_tokens_per_s"] for r in rounds),
        "in_step_tokens_per_s": [r["in_step_tokens_per_s"] for r in rounds],
        "median_step_s": statistics.median(s for r in rounds for s in r["step_s"]),
        "peak_rss_mb": [r["peak_rss_mb"] for r in rounds],
        "median_peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rounds),
        "real_tokens_per_step": rounds[0]["real_tokens_per_step"],
        "padded_tokens_per_step": rounds[0]["padded_tokens_per_step"],
        "first_loss": rounds[0]["first_loss"],
        "rounds": rounds,
    }


def _table(methods: dict[str, dict[str, Any]]) -> str:
    header = (f"{'method':<7} {'tokens/s (median)':>17} {'in-step tok/s':>13} {'rounds':>19} {'step s':>7} "
              f"{'real/padded tok per step':>24} {'peak RSS MB':>11} {'loss@0':>7}")
    lines = [header, "-" * len(header)]
    for name, m in methods.items():
        rounds = " ".join(f"{v:.0f}" for v in m["tokens_per_s"])
        tokens = f"{m['real_tokens_per_step']:.0f}/{m['padded_tokens_per_step']:.0f}"
        lines.append(f"{name:<7} {m['median_tokens_per_s']:>17.0f} {m['median_in_step_tokens_per_s']:>13.0f} "
                     f"{rounds:>19} {m['median_step_s']:>7.2f} {tokens:>24} {m['median_peak_rss_mb']:>11.0f} "
                     f"{m['first_loss']:>7.4f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before the timed ones (at least 1)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; each runs every method once, interleaved")
    parser.add_argument("--max-documents", type=int, default=None, help="load at most this many documents per split")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of tuner,plain,naive")
    parser.add_argument("--output", default="throughput.json", help="results file name in bench/results/")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        parser.error("--warmup, --steps and --rounds must be at least 1")
    methods = list(dict.fromkeys(m for m in args.methods.split(",") if m))
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method {unknown[0]!r} in --methods; use some of {','.join(METHODS)}")

    if args.worker:
        from tuner.training.trainer import quiet_lightning

        logging.basicConfig(level=logging.WARNING)
        quiet_lightning()
        Path(args.worker_output).write_text(json.dumps(_worker(args.worker, args)))
        return

    started = time.perf_counter()
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for number in range(1, args.rounds + 1):
        for method in methods:
            result = _spawn(method, args)
            results[method].append(result)
            print(f"round {number} {method:<5}: {result['tokens_per_s']:8.0f} tokens/s "
                  f"({result['wall_s']:.1f} s for {args.steps} steps, peak RSS {result['peak_rss_mb']:.0f} MB)",
                  flush=True)
    summaries = {m: _method_summary(r) for m, r in results.items()}
    print()
    print(_table(summaries))

    payload: dict[str, Any] = {"methods": summaries}
    if "tuner" in summaries:
        tuner = summaries["tuner"]
        payload.update(tokens_per_s=tuner["median_tokens_per_s"], peak_rss_mb=tuner["median_peak_rss_mb"])
        for key, other in (("ratio_vs_plain_torch", "plain"), ("speedup_vs_naive", "naive")):
            if other in summaries:
                value = tuner["median_tokens_per_s"] / summaries[other]["median_tokens_per_s"]
                payload[key] = value
                verdict = "meets" if value >= TARGETS[key] else "MISSES"
                print(f"{key}: {value:.3f} ({verdict} the target >= {TARGETS[key]})")
    total = time.perf_counter() - started
    print(f"whole run {total:.0f} s")
    command = "python bench/throughput.py " + shlex.join(sys.argv[1:])
    hardware = machine()
    precision = hardware["precision"]
    write_results(args.output, {
        **payload,
        "targets": TARGETS,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "max_documents": args.max_documents,
        "params": {"backbone": "sentence-transformers/all-MiniLM-L6-v2", "batch_size": 16, "max_sentences": 16,
                   "max_length": 512,
                   "precision": {"tuner": precision, "plain": "bf16 autocast" if precision == "bf16-mixed" else "fp32",
                                 "naive": "fp32"},
                   "gradient_clip_val": 1.0, "seed": SEED},
        "total_wall_s": total,
        "machine": hardware,
        "command": command.strip(),
    })


if __name__ == "__main__":
    main()
