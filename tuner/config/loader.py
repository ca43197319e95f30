"""Reading a study file: TOML and ``--set`` overrides into the dataclasses of :mod:`tuner.config.schema`.

Every key is checked against the dataclass fields, so a typo or a wrong type is reported with the
file, the section and the key (or the ``--set`` item that brought it). Relative paths in ``[data]``
are resolved against the study file's folder, so a study works from any working directory; ``~`` and
``$VARIABLES`` are expanded.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

from tuner.config.schema import (
    BackboneSpec,
    DataConfig,
    LRFinderConfig,
    ModelConfig,
    PrunerConfig,
    SamplerConfig,
    SearchSpace,
    StudyConfig,
    StudyFile,
    TrainerConfig,
)
from tuner.errors import ConfigError, require_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


_SECTIONS: dict[str, type] = {
    "data": DataConfig, "model": ModelConfig, "trainer": TrainerConfig, "study": StudyConfig, "search": SearchSpace,
}


_CHOICE_KEYS = ("backbone", "batch_size", "loss", "max_epochs")
_PATH_KEYS = ("train", "validation", "test", "path", "cache_dir")


def find_study_file(name_or_path: str, root: Path | None = None) -> Path:
    """Resolve ``--study``: a path to a ``.toml`` file, or a name looked up as ``studies/NAME.toml``."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix == ".toml" or candidate.parent != Path("."):
        require_file(candidate, "study file", ConfigError)
        return candidate
    studies = (root or Path.cwd()) / "studies"
    path = studies / f"{name_or_path}.toml"
    if not path.exists():
        known = sorted(p.stem for p in studies.glob("*.toml")) if studies.is_dir() else []
        hint = f"; known studies: {', '.join(known)}" if known else f"; {studies} holds no study files"
        raise ConfigError(f"no study named {name_or_path!r}: {path} does not exist{hint}")
    require_file(path, "study file", ConfigError)
    return path


def read_study_file(
    path: str | Path,
    overrides: Sequence[str] = (),
    check: Callable[[StudyFile], None] | None = None,
) -> StudyFile:
    """Read, override and validate the study file at ``path``.

    What the sections say is checked here; :func:`tuner.study.open.load_study_file`, which the commands
    use, also finds the file by name and checks its sampler and pruner by building them.

    An error is blamed on the file, or on the first ``--set`` item without which it would not happen.

    Args:
        path: the ``.toml`` file.
        overrides: ``section.key=value`` strings (``--set``); values are TOML (``2``, ``1e-4``,
            ``"text"``, ``[1, 2]``) or, failing that, a plain string.
        check: more validation of the result (building the sampler, say); its :class:`ConfigError` is
            blamed like the file's own.
    """
    path = Path(path)
    require_file(path, "study file", ConfigError)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"study file {path} cannot be read: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"study file {path} is not valid TOML: {err}") from None
    try:
        return _validated(_overridden(raw, overrides), path, check)
    except ConfigError as err:
        message = str(err)
    # the first item that brings the error in, if the file alone does not have it
    for count in range(len(overrides) + 1):
        try:
            _validated(_overridden(raw, overrides[:count]), path, check)
        except ConfigError as err:
            if str(err) == message:
                if count == 0:
                    break
                raise ConfigError(f"--set {overrides[count - 1]}: {message.removeprefix(f'{path}: ')}") from None
    raise ConfigError(message)


def _overridden(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    changed = copy.deepcopy(dict(raw))
    for item in overrides:
        apply_override(changed, item)
    return changed


def _validated(raw: Mapping[str, Any], path: Path, check: Callable[[StudyFile], None] | None) -> StudyFile:
    run = parse_study_file(raw, name=path.stem, source=path)
    if check is not None:
        try:
            check(run)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    return run


def parse_study_file(raw: Mapping[str, Any], name: str, source: Path | None = None) -> StudyFile:
    """Validate a study already read as a dict (see :func:`read_study_file`)."""
    where = str(source) if source else "study"
    unknown = sorted(set(raw) - set(_SECTIONS) - {"name"})
    if unknown:
        raise ConfigError(f"{where}: unknown section or key {unknown[0]!r}; known: name, {', '.join(_SECTIONS)}")
    if "data" not in raw:
        # a study without data would silently train on the demo corpus
        raise ConfigError(f"{'study file ' + str(source) if source else 'the study'} has no [data] section: give "
                          "data.path, data.train (with data.validation), data.hub, or data.builtin = \"python-docs\" "
                          "(the offline demo corpus)")
    base = source.parent if source else Path.cwd()
    built: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        table = raw.get(section, {})
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: [{section}] must be a table")
        table = dict(table)
        if section == "data":
            for key in _PATH_KEYS:
                if isinstance(table.get(key), str):
                    table[key] = _resolve_path(table[key], base)
        if section == "model" and "backbone" in table:
            table["backbone"] = _backbone(table["backbone"], f"{where}: model.backbone")
        if section == "study":
            try:
                table = _study_table(table)
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from None
        if section == "search":
            for key in _CHOICE_KEYS:
                if key in table and isinstance(table[key], list) and not table[key]:
                    raise ConfigError(f"{where}: search.{key}: the list of choices is empty")
            if isinstance(table.get("backbone"), list):
                table["backbone"] = tuple(
                    _backbone(b, f"{where}: search.backbone[{i}]") for i, b in enumerate(table["backbone"])
                )
        try:
            built[section] = _build(cls, table, section)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
    study_name = raw.get("name", built["study"].name or name)
    if not isinstance(study_name, str) or not study_name:
        raise ConfigError(f"{where}: name must be a non-empty string")
    return StudyFile(name=study_name, source=str(source) if source else None, **built)


def _study_table(table: dict[str, Any]) -> dict[str, Any]:
    """Turn the nested sampler / pruner / lr_finder tables into their dataclasses."""
    for key, cls, fixed in (("sampler", SamplerConfig, ("type", "seed")), ("pruner", PrunerConfig, ("type",))):
        value = table.get(key)
        if isinstance(value, str):
            value = {"type": value}
        if isinstance(value, Mapping):
            fields = {k: value[k] for k in fixed if k in value}
            options = {k: v for k, v in value.items() if k not in fixed}
            table[key] = _build(cls, {**fields, "options": options}, f"study.{key}")
        elif value is not None:
            raise ConfigError(f"study.{key}: must be a name or a table {{type = ..., option = ...}}")
    if isinstance(table.get("lr_finder"), str):
        table["lr_finder"] = {"mode": table["lr_finder"]}
    if isinstance(table.get("lr_finder"), Mapping):
        table["lr_finder"] = _build(LRFinderConfig, dict(table["lr_finder"]), "study.lr_finder")
    return table


def data_config(values: Mapping[str, Any]) -> DataConfig:
    """A :class:`DataConfig` from a dict (a checkpoint's stored settings plus overrides), validated."""
    return _build(DataConfig, dict(values), "data")


def parse_backbone(value: Any, key: str = "backbone") -> BackboneSpec:
    """A backbone entry: a name string, or a table ``{name = "...", config = {...}}``."""
    return _backbone(value, key)


def _backbone(value: Any, key: str) -> BackboneSpec:
    if isinstance(value, BackboneSpec):
        return value
    if isinstance(value, str) and value:
        return BackboneSpec(value)
    if isinstance(value, Mapping):
        extra = set(value) - {"name", "config"}
        if extra:
            raise ConfigError(f"{key}: unknown key {sorted(extra)[0]!r}; a backbone has 'name' and 'config'")
        name, config = value.get("name"), value.get("config", {})
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{key}.name: must be a hub name or a local path")
        if not isinstance(config, Mapping):
            raise ConfigError(f"{key}.config: must be a table of config overrides")
        return BackboneSpec(name, dict(config))
    raise ConfigError(f"{key}: must be a hub name, a local path or a table {{name = ..., config = {{...}}}}")


def _resolve_path(value: str, base: Path) -> str:
    expanded = Path(os.path.expandvars(os.path.expanduser(value)))
    return str(expanded if expanded.is_absolute() else (base / expanded).resolve())


def apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. model.learning_rate=1e-4")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    table = raw
    for part in parts[:-1]:
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise ConfigError(f"--set {item!r}: {part} is not a table")
    table[parts[-1]] = value


def section_overrides(items: Sequence[str], section: str, command: str) -> dict[str, Any]:
    """``--set`` items of a command that takes one section's keys only (``tuner evaluate``: ``data.*``).

    Each key and value is checked against the section, and an error names its item; ``key=value`` is
    short for ``section.key=value``.
    """
    values: dict[str, Any] = {}
    for item in items:
        key = item.partition("=")[0].strip()
        if "." in key and key.split(".")[0] != section:
            raise ConfigError(f"--set {item}: only {section}.* keys apply to {command}")
        raw: dict[str, Any] = {}
        apply_override(raw, item if "." in key else f"{section}.{item}")
        try:
            _coerced(_SECTIONS[section], raw[section], section)
        except ConfigError as err:
            raise ConfigError(f"--set {item}: {err}") from None
        values.update(raw[section])
    return values


def _build(cls: type, table: dict[str, Any], section: str) -> Any:
    return cls(**_coerced(cls, table, section))


def _coerced(cls: type, table: Mapping[str, Any], section: str) -> dict[str, Any]:
    """``table`` checked against the fields of ``cls``: unknown keys and wrong types are errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(f"[{section}] unknown key {unknown[0]!r}; known keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    return {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in table.items()}


def _describe(hint: Any) -> str:
    """A field type in the words of an error message."""
    if typing.get_origin(hint) is Literal:
        return " or ".join(repr(v) for v in typing.get_args(hint))
    words = {float: "a number", int: "a whole number", str: "a string", bool: "true or false"}
    return words.get(hint, "a list" if typing.get_origin(hint) is tuple else getattr(hint, "__name__", str(hint)))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a field's type; TOML arrays become tuples."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        expected = " or ".join(_describe(option) for option in args if option is not type(None))
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        return value
    if hint in (str, bool):
        if not isinstance(value, hint):
            raise ConfigError(f"{key}: expected {'a string' if hint is str else 'true or false'}, got {value!r}")
        return value
    if hint is BackboneSpec:
        return _backbone(value, key)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, hint):
            raise ConfigError(f"{key}: must be a table")
        return value
    if typing.get_origin(hint) is Mapping or hint is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: must be a table")
        return dict(value)
    return value
