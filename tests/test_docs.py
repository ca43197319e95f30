"""The documentation (README.md, BENCHMARKS.md, docs/*.md): its links reach files and headings that exist,
the `tuner.*` names and repository paths it writes in code exist, its annotated study files load, and the
README stays short enough to read in five minutes."""

from __future__ import annotations

import ast
import fnmatch
import importlib
import re
from pathlib import Path
from typing import Any

import pytest

from tuner.config.loader import read_study_file

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

_FENCE = re.compile(r"^ {0,3}(```|~~~)\s*(\w*)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# a quoted name is a string (the proxy's gRPC service, "tuner.Storage"), one after / or - part of a path
_TUNER_NAME = re.compile(r"(?<![\w./\"'-])tuner(?:\.[A-Za-z_]\w*)+")
_FILE_SUFFIXES = {"db", "toml", "json", "html", "md", "py", "png", "csv", "out", "lock", "ckpt"}
_REPO_PATH = re.compile(r"^(?:tuner|tests|bench|examples|studies|docs|\.ci)/[\w./*-]*(?:::\w+)?$")


def _blocks(text: str) -> tuple[list[str], list[tuple[str, str]]]:
    """A page's prose lines (outside fenced code) and its fenced code blocks as (language, code)."""
    prose: list[str] = []
    blocks: list[tuple[str, str]] = []
    fence: str | None = None
    language, code = "", []
    for line in text.splitlines():
        match = _FENCE.match(line)
        if fence is None and match:
            fence, language, code = match.group(1), match.group(2), []
        elif fence is not None and line.strip().startswith(fence):
            blocks.append((language, "\n".join(code)))
            fence = None
        elif fence is not None:
            code.append(line)
        else:
            prose.append(line)
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text lowercased, punctuation but - and _ dropped, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page, a repeated heading numbered as GitHub numbers it."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in _blocks(page.read_text(encoding="utf-8"))[0]:
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    """The targets of a page's Markdown links and images (code spans and code blocks hold none)."""
    targets: list[str] = []
    for line in _blocks(page.read_text(encoding="utf-8"))[0]:
        targets.extend(_LINK.findall(_CODE_SPAN.sub("code", line)))
    return targets


def broken_links(page: Path) -> list[str]:
    """The relative links of a page whose file, or whose heading in that file, does not exist."""
    broken = []
    for target in links(page):
        if _SCHEME.match(target):
            continue  # https:, mailto:: not this repository's
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: {file} does not exist")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: {file.name} has no heading with the anchor #{anchor}")
    return broken


def code(page: Path) -> list[tuple[str, str]]:
    """A page's code: every code span (language "") and fenced block, as (language, text)."""
    prose, blocks = _blocks(page.read_text(encoding="utf-8"))
    spans = [("", match.group(2)) for line in prose for match in _CODE_SPAN.finditer(line)]
    return spans + blocks


def tuner_names(page: Path) -> set[str]:
    """The dotted ``tuner.*`` names a page writes in code, file names (``tuner.db``) apart."""
    names = {name for _, text in code(page) for name in _TUNER_NAME.findall(text)}
    return {name for name in names if name.rsplit(".", 1)[-1] not in _FILE_SUFFIXES}


def imported_names(page: Path) -> set[str]:
    """The ``tuner`` names that the page's Python blocks import (``from tuner import run_study``)."""
    names: set[str] = set()
    for language, text in code(page):
        if language != "python":
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tuner":
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names if alias.name.split(".")[0] == "tuner")
    return names


def resolve(name: str) -> Any:
    """The object a dotted name names: its longest importable module, then attributes."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        module_name = ".".join(parts[:end])
        try:
            found: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is not None and (module_name == err.name or module_name.startswith(err.name + ".")):
                continue  # this prefix is not a module: try a shorter one
            raise  # a module that exists failed to import one of its own dependencies
        for attribute in parts[end:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(name)


def _placeholder(path: str) -> bool:
    """Whether a path names a kind of file rather than one file: ``studies/NAME.toml``."""
    return any(part.split(".")[0].isupper() for part in path.split("/"))


def _ignored(path: str) -> bool:
    """Whether ``.gitignore`` names the path: an output a command writes (``bench/results/*.html``), not a
    file the repository holds."""
    patterns = [line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()]
    return any(fnmatch.fnmatch(path, pattern) for pattern in patterns if pattern and not pattern.startswith("#"))


def missing_paths(page: Path) -> list[str]:
    """Repository paths written alone in a code span (``bench/scale.py``, ``tests/x.py::test_y``) that do not
    exist: no file or folder, no match of a glob, or no such test in the file. Placeholders and ignored
    outputs are not the repository's files."""
    missing = []
    for language, text in code(page):
        if language or not _REPO_PATH.match(text) or _placeholder(text) or _ignored(text):
            continue
        path, _, test = text.partition("::")
        matches = sorted(ROOT.glob(path)) if "*" in path else [ROOT / path] if (ROOT / path).exists() else []
        if not matches:
            missing.append(f"{text}: no such file or folder")
        elif test and not re.search(rf"^def {re.escape(test)}\(", matches[0].read_text(), re.MULTILINE):
            missing.append(f"{text}: {path} defines no {test}")
    return missing


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_the_pages_are_found() -> None:
    names = {_page_id(page) for page in PAGES}
    assert {"README.md", "BENCHMARKS.md", "docs/faults.md", "docs/architecture.md"} <= names


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Many workers: the storage proxy", "many-workers-the-storage-proxy"),
        ("`[study]` and `[search]`", "study-and-search"),
        ("`tuner reap`", "tuner-reap"),
        ("Set-up", "set-up"),
        ("The budget, exactly", "the-budget-exactly"),
        ("head_to_head (quick)", "head_to_head-quick"),
    ],
)
def test_headings_anchor_as_on_github(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_a_repeated_heading_is_numbered(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Notes\n\n```bash\n# not a heading\n```\n\n## Notes\n", encoding="utf-8")
    assert anchors(page) == {"notes", "notes-1"}


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md#other-page) [`[x]` y](#page) [web](https://example.org/a#b)\n"
        "[gone](missing.md) [no heading](other.md#nope)\n\n```\n[in code](nowhere.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        f"missing.md: {(tmp_path / 'missing.md').resolve()} does not exist",
        "other.md#nope: other.md has no heading with the anchor #nope",
    ]


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_relative_links_reach_files_and_headings(page: Path) -> None:
    assert broken_links(page) == []


def test_names_resolve_to_their_objects() -> None:
    assert resolve("tuner.storage.urls.mask").__name__ == "mask"
    assert resolve("tuner.storage.urls.DEFAULT_URL") == "sqlite:///tuner.db"
    with pytest.raises(AttributeError):
        resolve("tuner.preflight.check")  # tuner has no preflight module or attribute


def test_names_in_code_are_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Call `tuner.hpo.search.build_sampler(config, run)`; the file `tuner.db` and the\n"
        'service `"tuner.Storage"` are not names.\n\n'
        "```python\nfrom tuner import run_study, trials\nimport tuner.keys\n```\n",
        encoding="utf-8",
    )
    assert tuner_names(page) == {"tuner.hpo.search.build_sampler", "tuner.keys"}
    assert imported_names(page) == {"tuner.run_study", "tuner.trials", "tuner.keys"}


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_tuner_names_in_code_import(page: Path) -> None:
    unresolved = []
    for name in sorted(tuner_names(page) | imported_names(page)):
        try:
            resolve(name)
        except (ImportError, AttributeError) as err:
            unresolved.append(f"{name}: {type(err).__name__}: {err}")
    assert unresolved == []


def test_a_missing_path_is_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "`bench/scale.py`, `studies/*.toml`, `studies/NAME.toml`, `bench/results/x.html`,\n"
        "`tests/test_docs.py::test_a_missing_path_is_found`, `tests/test_docs.py::test_nothing`,\n"
        "`bench/nowhere.py`, `tuner/study/`\n",
        encoding="utf-8",
    )
    assert missing_paths(page) == [
        "tests/test_docs.py::test_nothing: tests/test_docs.py defines no test_nothing",
        "bench/nowhere.py: no such file or folder",
    ]


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_repository_paths_in_code_exist(page: Path) -> None:
    assert missing_paths(page) == []


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_annotated_study_files_load(page: Path, tmp_path: Path) -> None:
    for number, (language, text) in enumerate(code(page)):
        if language == "toml" and "[data]" in text:
            study = tmp_path / f"study-{number}.toml"
            study.write_text(text, encoding="utf-8")
            read_study_file(study)  # unknown keys, wrong types and bad values raise ConfigError


def test_the_readme_reads_in_five_minutes() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move reference into docs/"
