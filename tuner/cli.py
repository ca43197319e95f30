"""Command line: argument parsing only; every command calls one library function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tuner.config.schema import PRECISIONS
from tuner.errors import Interrupted, TunerError
from tuner.keys import FAIL_REASON_ATTR, WORKER_ATTR

if TYPE_CHECKING:  # the commands import the library when they run, so that `tuner --help` starts at once
    from tuner.storage.records import TrialRow


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    cells = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
    print(f"{title:<12} {cells}")


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from tuner.config.loader import find_study_file, read_study_file
    from tuner.training.trainer import train

    run = read_study_file(find_study_file(args.study), args.set)
    result = train(run, output_dir=args.output)
    if args.json:
        print(json.dumps(asdict(result), indent=2))
        return 0
    _print_metrics("validation", result.validation)
    if result.test:
        _print_metrics("test", result.test)
    print(f"best checkpoint: {result.best_checkpoint}")
    return 0


def _checkpoint(args: argparse.Namespace) -> str:
    """``--checkpoint PATH``, or the best trial's checkpoint of ``--study``."""
    if args.checkpoint:
        return str(args.checkpoint)
    if not args.study:
        raise TunerError("give --checkpoint PATH or --study NAME")
    from tuner.study.open import load_study_file
    from tuner.study.queries import best_checkpoint

    return best_checkpoint(load_study_file(args.study), args.storage)


def cmd_run(args: argparse.Namespace) -> int:
    import signal

    from tuner.config.loader import find_study_file
    from tuner.study.open import load_study_file
    from tuner.study.pool import run_workers
    from tuner.study.queries import trials
    from tuner.study.run import run_study

    run = load_study_file(args.study, args.set)
    if args.workers > 1:
        summary = run_workers(run, find_study_file(args.study), args.workers, args.set, storage=args.storage,
                              n_trials=args.n_trials, timeout=args.timeout)
    else:
        summary = run_study(run, storage=args.storage, n_trials=args.n_trials, timeout=args.timeout,
                            worker=args.worker_id, check=not args.worker_id)  # --workers checked the study
    if not args.worker_id:
        print(_table(trials(run, args.storage)))
    print(f"study {summary.study} in {summary.storage}: {summary.finished}/{summary.n_trials} trials finished, "
          f"{summary.trials_run} run now")
    if summary.best and not args.worker_id:
        print(f"best: trial {summary.best.number} value={summary.best.value:.4f} "
              f"params={json.dumps(summary.best.params)}")
    if summary.failed_workers:
        print(f"tuner: error: workers exited abnormally: {', '.join(summary.failed_workers)}", file=sys.stderr)
        return 1
    if summary.repeated_failure:
        print(f"tuner: error: {summary.repeated_failure}; stopping", file=sys.stderr)
        return 1
    if summary.forced:
        print(f"tuner: quit at once on a second {summary.interrupted}; the running trial stays RUNNING until a "
              "worker finds its heartbeat stale and queues its retry", file=sys.stderr)
    elif summary.interrupted:
        print(f"tuner: stopped by {summary.interrupted}; the interrupted trial is failed and queued for retry",
              file=sys.stderr)
    if summary.interrupted:
        return 128 + int(signal.Signals[summary.interrupted])
    return 0


def cmd_reap(args: argparse.Namespace) -> int:
    from tuner.study.open import load_study_file
    from tuner.study.recovery import reap_study

    reaped = reap_study(load_study_file(args.study), args.storage, args.older_than)
    if args.json:
        print(json.dumps([item.to_json() for item in reaped], indent=2))
        return 0
    for item in reaped:
        print(f"trial {item.number}: {item.reason}")
    print(f"{len(reaped)} stale trial{'s' if len(reaped) != 1 else ''} failed")
    return 0


def _table(rows: list[TrialRow]) -> str:
    header = f"{'#':>4} {'state':<9} {'value':>7} {'pmr':>6} {'epochs':>6} {'lr used':>9} {'finder':>9} " \
             f"{'secs':>6} {'worker':>10}  params"
    lines = [header]
    for row in rows:
        attrs = row.attrs
        finder = (attrs.get("lr_finder") or {}).get("suggestion")
        value = "" if row.value is None else f"{row.value:.4f}"
        pmr = attrs.get("val_pmr")
        params = {k: v for k, v in row.params.items() if k != "learning_rate"}
        lines.append(
            f"{row.number:>4} {row.state:<9} {value:>7} {'' if pmr is None else f'{pmr:.3f}':>6} "
            f"{attrs.get('epochs', ''):>6} {_num(attrs.get('lr_used')):>9} {_num(finder):>9} "
            f"{_num(row.duration_s, '.0f'):>6} {attrs.get(WORKER_ATTR, ''):>10}  {json.dumps(params)}"
            + (f"  [{attrs[FAIL_REASON_ATTR]}]" if row.state == "FAIL" and attrs.get(FAIL_REASON_ATTR) else "")
        )
    return "\n".join(lines)


def _num(value: Any, spec: str = ".2e") -> str:
    return "" if value is None else format(value, spec)


def cmd_trials(args: argparse.Namespace) -> int:
    from tuner.study.open import load_study_file
    from tuner.study.queries import trials

    rows = trials(load_study_file(args.study), args.storage)
    print(json.dumps([row.to_json() for row in rows], indent=2, default=str) if args.json else _table(rows))
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from tuner.study.open import load_study_file
    from tuner.study.queries import best

    row = best(load_study_file(args.study), args.storage)
    if args.json:
        print(json.dumps(row.to_json(), indent=2, default=str))
    else:
        print(f"trial {row.number}: value={row.value:.4f}")
        print(f"params: {json.dumps(row.params)}")
        print(f"checkpoint: {row.attrs.get('checkpoint')}")
    return 0


def cmd_studies(args: argparse.Namespace) -> int:
    from tuner.storage.studies import list_studies

    found = list_studies(args.storage)
    if args.json:
        print(json.dumps(found.to_json(), indent=2))
        return 0
    print("study files:")
    for path in found.files:
        print(f"  {path}")
    print(f"studies in {found.storage}:")
    for study in found.studies:
        best = "" if study.best_value is None else f" best={study.best_value:.4f}"
        print(f"  {study.name}: {study.trials} trials{best}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tuner.config.loader import section_overrides
    from tuner.config.schema import TrainerConfig
    from tuner.study.open import load_study_file
    from tuner.study.queries import evaluate

    data_overrides = section_overrides(args.set, "data", "tuner evaluate")
    results = evaluate(args.checkpoint, study=load_study_file(args.study) if args.study else None,
                       storage=args.storage, split=args.split, files=args.data or (), data_overrides=data_overrides,
                       trainer=TrainerConfig(precision=args.precision))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, metrics in results.items():
            _print_metrics(name, metrics)
    return 0


def cmd_order(args: argparse.Namespace) -> int:
    from tuner.data.readers import decode_lines
    from tuner.training.inference import order_sentences

    if args.file in (None, "-"):
        lines = decode_lines(sys.stdin.buffer.read(), "standard input")
    else:
        path = Path(args.file)
        try:
            lines = decode_lines(path.read_bytes(), str(path))
        except OSError as err:
            raise TunerError(f"cannot read {path}: {err.strerror or err}") from None
    sentences = [line.strip() for line in lines if line.strip()]
    if not sentences:
        raise TunerError("no sentences given: write one sentence per line")
    for sentence in order_sentences(_checkpoint(args), sentences):
        print(sentence)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tuner.report.page import write_report

    path, seconds = write_report(args.study, args.output, storage=args.storage, compare=args.compare)
    print(f"wrote {path} in {seconds:.1f} s")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from tuner.dashboard import serve

    serve(args.study, storage=args.storage, host=args.host, port=args.port)
    return 0


def cmd_storage_serve(args: argparse.Namespace) -> int:
    from tuner.storage.proxy import serve
    from tuner.storage.urls import mask, resolve_url

    url = resolve_url(args.storage)

    def ready(port: int) -> None:
        print(f"storage proxy for {mask(url)} listening on grpc://{args.host}:{port} "
              f"(workers: --storage grpc://{args.host}:{port}); SIGTERM or Ctrl+C stops it", flush=True)

    serve(url, host=args.host, port=args.port, threads=args.threads, on_ready=ready)
    print("storage proxy stopped", flush=True)
    return 0


N = TypeVar("N", int, float)


def _number(text: str, kind: type[N], expected: str, valid: Callable[[N], bool], rule: str) -> N:
    """``text`` read as ``kind`` (an argument's type), refused with what was ``expected`` or the ``rule`` it breaks."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not valid(value):
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
    return value


def _port(text: str) -> int:
    return _number(text, int, "a port number", lambda v: 0 <= v <= 65535, "in 0..65535 (0: any free port)")


def _positive_int(text: str) -> int:
    return _number(text, int, "a whole number", lambda v: v > 0, "positive")


def _positive_float(text: str) -> float:
    return _number(text, float, "a number of seconds", lambda v: v > 0, "positive")


def _checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint written by tuner train or tuner run")
    source.add_argument("--study", help="use the best trial's checkpoint of this study")
    parser.add_argument("--storage", help="database URL of --study")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuner", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="one training run with the study file's fixed settings")
    train.add_argument("--study", required=True, help="study name (studies/NAME.toml) or path to a .toml file")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a study setting, e.g. --set model.learning_rate=5e-5 (repeatable)")
    train.add_argument("--output", help="run folder (default: trainer.output_dir/STUDY/TIMESTAMP)")
    train.add_argument("--json", action="store_true", help="print the result as JSON")
    train.set_defaults(func=cmd_train)

    run = commands.add_parser("run", help="run a study's trials until its budget is spent")
    run.add_argument("--study", required=True, help="study name (studies/NAME.toml) or path to a .toml file")
    run.add_argument("--storage", help="database URL (default: $TUNER_STORAGE, the study file, sqlite:///tuner.db)")
    run.add_argument("--n-trials", type=_positive_int, help="total trials of the study (default: study.n_trials)")
    run.add_argument("--timeout", type=_positive_float, help="stop after the trial running at this many seconds")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a study setting")
    run.add_argument("--workers", type=_positive_int, default=1,
                     help="start this many local worker processes on the study (default: 1, this process)")
    run.add_argument("--worker-id", help=argparse.SUPPRESS)  # set by --workers for each worker process
    run.set_defaults(func=cmd_run)

    reap = commands.add_parser("reap", help="fail a study's stale RUNNING trials (dead workers) and retry them")
    reap.add_argument("--study", required=True, help="study name or path")
    reap.add_argument("--storage", help="database URL")
    reap.add_argument("--older-than", type=_positive_float, metavar="SECONDS",
                      help="also reap trials running for longer than this (storages without heartbeats)")
    reap.add_argument("--json", action="store_true", help="print what was reaped as JSON")
    reap.set_defaults(func=cmd_reap)

    for name, func, text in (("trials", cmd_trials, "one row per trial"), ("best", cmd_best, "the best trial")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--study", required=True, help="study name or path")
        sub.add_argument("--storage", help="database URL")
        sub.add_argument("--json", action="store_true", help="print JSON (see docs/commands.md)")
        sub.set_defaults(func=func)

    studies = commands.add_parser("studies", help="list study files and the studies in a storage")
    studies.add_argument("--storage", help="database URL")
    studies.add_argument("--json", action="store_true", help="print JSON")
    studies.set_defaults(func=cmd_studies)

    evaluate = commands.add_parser("evaluate", help="metrics of a checkpoint on a split or on data files")
    _checkpoint_arguments(evaluate)
    evaluate.add_argument("--split", default="test", choices=("train", "validation", "test"))
    evaluate.add_argument("--data", action="append", metavar="FILE",
                          help="evaluate on this file instead of a split (repeatable)")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="override a data setting for reading, e.g. --set data.separator=' <eos> '")
    evaluate.add_argument("--precision", default="auto", choices=PRECISIONS,
                          help="auto (the default) is the best for the hardware here; the training run's "
                               "precision reproduces its test metrics exactly")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.set_defaults(func=cmd_evaluate)

    report = commands.add_parser("report", help="one self-contained HTML page comparing a study's trials")
    report.add_argument("--study", required=True,
                        help="study name or path (or the name of a study in --storage without a study file)")
    report.add_argument("--compare", nargs="+", default=[], metavar="OTHER",
                        help="other studies in the same storage, shown side by side")
    report.add_argument("-o", "--output", default="report.html", help="the HTML file to write (default: report.html)")
    report.add_argument("--storage", help="database URL")
    report.set_defaults(func=cmd_report)

    dashboard = commands.add_parser("dashboard", help="a live web dashboard of a study (optuna-dashboard), read-only")
    dashboard.add_argument("--study", required=True, help="study name or path (or a study name in --storage)")
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="address to listen on (default: 127.0.0.1, this machine only)")
    dashboard.add_argument("--port", type=_port, default=8080, help="port (default: 8080; 0: any free port)")
    dashboard.add_argument("--storage", help="database URL")
    dashboard.set_defaults(func=cmd_dashboard)

    storage = commands.add_parser("storage", help="serve a database to many workers (the gRPC storage proxy)")
    storage_commands = storage.add_subparsers(dest="storage_command", required=True, metavar="COMMAND")
    serve = storage_commands.add_parser(
        "serve", help="run Optuna's gRPC storage proxy: workers use --storage grpc://HOST:PORT, and only the "
                      "proxy connects to the database")
    serve.add_argument("--storage", help="database URL to serve (default: $TUNER_STORAGE, sqlite:///tuner.db)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine only; elsewhere it warns: "
                            "the proxy has no authentication)")
    serve.add_argument("--port", type=_port, default=13000, help="port (default: 13000; 0: any free port)")
    serve.add_argument("--threads", type=_positive_int, default=10,
                       help="calls served at once, and so at most the database connections (default: 10)")
    serve.set_defaults(func=cmd_storage_serve)

    order = commands.add_parser("order", help="put the sentences of one document in order")
    _checkpoint_arguments(order)
    order.add_argument("file", nargs="?", help="one sentence per line, in any order (default: stdin)")
    order.set_defaults(func=cmd_order)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("tuner").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args))
    except TunerError as err:
        print(f"tuner: error: {err}", file=sys.stderr)
        return 2
    except Interrupted as err:  # SIGINT or SIGTERM outside a trial (the pre-flight check)
        print(f"tuner: stopped by {err}", file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:
        print("tuner: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
