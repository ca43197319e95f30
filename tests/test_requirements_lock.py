"""requirements.lock pins a version of every requirement in pyproject.toml, and each pin satisfies its range."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
UNLOCKED = {"torch"}  # installed first, by `make setup`, in the build the machine needs


def read_lock(path: Path) -> dict[str, Version]:
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        found = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        assert found, f"{path.name}:{number}: not a 'name==version' pin: {line!r}"
        pins[canonicalize_name(found[1])] = Version(found[2])
    return pins


def requirements() -> list[tuple[str, Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [("dependencies", Requirement(r)) for r in project["dependencies"]]
    for extra, listed in project["optional-dependencies"].items():
        found += [(f"optional-dependencies.{extra}", Requirement(r)) for r in listed]
    return found


def unmet(pins: dict[str, Version]) -> list[str]:
    """What the lock fails to satisfy, one line per requirement (those whose marker applies here)."""
    problems = []
    for where, requirement in requirements():
        name = canonicalize_name(requirement.name)
        if name in UNLOCKED or (requirement.marker and not requirement.marker.evaluate()):
            continue
        if name not in pins:
            problems.append(f"{where}: {requirement} has no pin in requirements.lock")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{where}: {requirement} is not satisfied by the pinned {pins[name]}")
    return problems


def test_the_lock_satisfies_every_requirement_of_pyproject() -> None:
    pins = read_lock(ROOT / "requirements.lock")
    assert not unmet(pins), "run `make lock`:\n" + "\n".join(unmet(pins))
    assert not UNLOCKED & set(pins), "torch is installed apart, by `make setup`"


def test_a_stale_lock_is_named(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    text = (ROOT / "requirements.lock").read_text()
    lock.write_text(re.sub(r"(?m)^optuna==.*$", "optuna==3.6.1", text).replace("\nmypy==", "\nnot-mypy=="))
    problems = unmet(read_lock(lock))
    assert any(p.startswith("dependencies: optuna>=") and "pinned 3.6.1" in p for p in problems), problems
    assert any(p.startswith("optional-dependencies.dev: mypy>=") and "no pin" in p for p in problems), problems


def test_the_makefile_installs_every_extra_from_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    extras = re.search(r"^EXTRAS := (.+)$", makefile, re.M)
    assert extras, "Makefile: no EXTRAS"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(extras[1].split(",")) == set(project["optional-dependencies"])
    assert '-c $(LOCK) -e ".[$(EXTRAS)]"' in makefile
