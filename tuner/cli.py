"""Command line: argument parsing only; every command calls one library function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuner.errors import TunerError


def _overrides(items: Sequence[str], section: str | None = None) -> Any:
    """``--set`` values; with ``section``, only that section's keys, as a dict."""
    if section is None:
        return list(items)
    from tuner.config import apply_override

    raw: dict[str, Any] = {}
    for item in items:
        apply_override(raw, item if item.startswith(f"{section}.") else f"{section}.{item}")
    extra = sorted(set(raw) - {section})
    if extra:
        raise TunerError(f"--set: only {section}.* keys apply here, not {extra[0]}.*")
    return raw.get(section, {})


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    cells = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
    print(f"{title:<12} {cells}")


def cmd_train(args: argparse.Namespace) -> int:
    from tuner.config import find_study, load_study
    from tuner.train import result_dict, train

    run = load_study(find_study(args.study), args.set)
    result = train(run, output_dir=args.output)
    if args.json:
        print(json.dumps(result_dict(result), indent=2))
        return 0
    _print_metrics("validation", result.validation)
    if result.test:
        _print_metrics("test", result.test)
    print(f"best checkpoint: {result.best_checkpoint}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tuner.train import evaluate

    results = evaluate(args.checkpoint, split=args.split, files=args.data or (),
                       data_overrides=_overrides(args.set, "data"))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, metrics in results.items():
            _print_metrics(name, metrics)
    return 0


def cmd_order(args: argparse.Namespace) -> int:
    from tuner.train import order_sentences

    if args.file in (None, "-"):
        text = sys.stdin.read()
    else:
        path = Path(args.file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise TunerError(f"cannot read {path}: {err}") from None
    sentences = [line.strip() for line in text.splitlines() if line.strip()]
    if not sentences:
        raise TunerError("no sentences given: write one sentence per line")
    for sentence in order_sentences(args.checkpoint, sentences):
        print(sentence)
    return 0


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

    evaluate = commands.add_parser("evaluate", help="metrics of a checkpoint on a split or on data files")
    evaluate.add_argument("--checkpoint", required=True, help="a checkpoint written by tuner train")
    evaluate.add_argument("--split", default="test", choices=("train", "validation", "test"))
    evaluate.add_argument("--data", action="append", metavar="FILE",
                          help="evaluate on this file instead of a split (repeatable)")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="override a data setting for reading, e.g. --set data.separator=' <eos> '")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.set_defaults(func=cmd_evaluate)

    order = commands.add_parser("order", help="put the sentences of one document in order")
    order.add_argument("--checkpoint", required=True, help="a checkpoint written by tuner train")
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
    except KeyboardInterrupt:
        print("tuner: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
