"""A scan of Python source for reaches past the public API of Optuna, optuna-integration, Lightning, torch and
transformers (``tests/test_compat.py``, ``tests/test_private_names.py``).

It reports, by line and name:

- an import of a private module or name of those packages (``optuna.storages._rdb``, ``from x import _y``);
- a private attribute of one of their modules or classes (``torch.cpu._is_amx_tile_supported``,
  ``RDBStorage._get_stale_trial_ids``);
- inside a class that derives from one of their classes, ``self._x``, ``super()._x`` or ``def _x`` where
  ``_x`` is a name of that upstream class (its private state, or a private hook overridden);
- elsewhere, ``obj._x`` (or ``getattr(obj, "_x")``, or the string ``"_x"``) where ``_x`` is a private name
  of an upstream class that tuner's objects are (``study._storage``, ``trial._trial_id``), whatever ``obj``
  is: a scan does not know its type, and tuner's own objects do not reach into each other that way.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = ("optuna", "optuna_integration", "lightning", "lightning_fabric", "pytorch_lightning", "torch",
            "transformers")
# the upstream classes that tuner's objects are, though tuner does not subclass them: a study, its trials and
# storages, and the trainer's loops
USED = [
    ("optuna.study", "Study"),
    ("optuna.trial", "Trial"),
    ("optuna.trial", "FrozenTrial"),
    ("optuna.storages", "BaseStorage"),
    ("optuna.storages", "RDBStorage"),
    ("optuna.storages._cached_storage", "_CachedStorage"),
    ("optuna.storages", "GrpcStorageProxy"),
    ("lightning.pytorch", "Trainer"),
    ("lightning.pytorch.loops.fit_loop", "_FitLoop"),
    ("lightning.pytorch.loops.training_epoch_loop", "_TrainingEpochLoop"),
    ("lightning.pytorch", "LightningModule"),
    ("lightning.pytorch", "LightningDataModule"),
    ("lightning.pytorch.callbacks", "Callback"),
    ("lightning.pytorch.strategies", "DDPStrategy"),
    ("optuna_integration", "PyTorchLightningPruningCallback"),
]
_SELF_ATTR = re.compile(r"\bself\.(_[A-Za-z]\w*)")


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _upstream(path: str) -> bool:
    return path.split(".")[0] in UPSTREAM


@functools.cache
def _names_of(cls: type) -> frozenset[str]:
    """The private names of an upstream class: its attributes, and those its methods set on an instance."""
    names = {name for name in dir(cls) if private(name)}
    for klass in cls.__mro__:
        if _upstream(klass.__module__):
            try:
                names |= set(_SELF_ATTR.findall(inspect.getsource(klass)))
            except (OSError, TypeError):
                pass
    return frozenset(names)


@functools.cache
def _used_names() -> frozenset[str]:
    names: set[str] = set()
    for module, name in USED:
        names |= _names_of(getattr(importlib.import_module(module), name))
    return frozenset(names)


def _resolve(path: str) -> object | None:
    """The object a dotted path names (``optuna.storages.RDBStorage``), or ``None``."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            target = getattr(target, part, None)
            if target is None:
                return None
        return target
    return None


def _upstream_classes(cls: type) -> list[type]:
    return [klass for klass in cls.__mro__ if _upstream(klass.__module__) and klass is not object]


class _Scan(ast.NodeVisitor):
    def __init__(self, module: str) -> None:
        self.module = module
        self.aliases: dict[str, str] = {}  # a local name -> the dotted path it was imported as
        self.classes: list[frozenset[str]] = []  # the upstream private names of each enclosing class
        self.found: list[tuple[int, str]] = []

    def report(self, node: ast.AST, name: str) -> None:
        self.found.append((getattr(node, "lineno", 0), name))

    # imports
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if _upstream(alias.name) and any(private(part) for part in alias.name.split(".")):
                self.report(node, alias.name)
            self.aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else \
                alias.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:  # relative: tuner's own
            base = ".".join(self.module.split(".")[:-node.level] + ([base] if base else []))
        for alias in node.names:
            path = f"{base}.{alias.name}"
            if _upstream(path) and any(private(part) for part in path.split(".")):
                self.report(node, path)
            self.aliases[alias.asname or alias.name] = path

    # the dotted path an expression names, where it starts with an imported name
    def path_of(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.path_of(node.value)
            return None if base is None else f"{base}.{node.attr}"
        return None

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        names: set[str] = set()
        for base in node.bases:
            path = self.path_of(base)
            cls = _resolve(path) if path is not None else None
            if isinstance(cls, type):
                for klass in _upstream_classes(cls):
                    names |= _names_of(klass)
        for decorator in node.decorator_list:
            self.visit(decorator)
        for base in node.bases:
            self.visit(base)
        self.classes.append(frozenset(names))
        for statement in node.body:
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)) and statement.name in names:
                self.report(statement, f"def {statement.name} (overrides an upstream private name)")
            self.visit(statement)
        self.classes.pop()

    def _own(self, node: ast.expr) -> bool:
        """Whether ``node`` is ``self``, ``cls`` or ``super()``: the enclosing class's own object."""
        if isinstance(node, ast.Name):
            return node.id in ("self", "cls")
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super")

    def check(self, node: ast.AST, base: ast.expr, name: str) -> None:
        if not private(name):
            return
        path = self.path_of(base)
        if path is not None and _upstream(path):
            self.report(node, f"{path}.{name}")
        elif self._own(base):
            if self.classes and name in self.classes[-1]:
                self.report(node, f"{ast.unparse(base)}.{name}")
        elif name in _used_names():
            self.report(node, f"{ast.unparse(base)}.{name}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.check(node, node.value, node.attr)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if (isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)):
            self.check(node, node.args[0], node.args[1].value)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        # a private name given as a string (a list of method names to wrap, a key of __getstate__)
        if isinstance(node.value, str) and private(node.value) and node.value in _used_names() | (
                self.classes[-1] if self.classes else frozenset()):
            self.report(node, repr(node.value))


def reaches(source: str, module: str) -> list[tuple[int, str]]:
    """Each reach past a public API of an upstream package in ``source`` (module ``module``): (line, name)."""
    scan = _Scan(module)
    scan.visit(ast.parse(source))
    return sorted(set(scan.found))
