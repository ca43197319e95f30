# Set-up and the two everyday commands. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
# The CPU build that lies on this machine's disk; set TORCH="torch" (or a CUDA wheel) elsewhere.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test soak lint bench-quality bench-throughput bench-overhead bench-study bench-report bench-storage bench-h2h bench-h2h-quick bench-scale clean

$(BIN)/tuner: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,db,tensorboard,dashboard,bench]"
	touch $(BIN)/tuner

setup: $(BIN)/tuner

demo: setup
	$(BIN)/tuner run --study demo

test: setup
	$(BIN)/python -m pytest -q

# the randomised soak: sessions killed at random (TUNER_SOAK_SEED=SEED replays a printed seed)
soak: setup
	$(BIN)/python -m pytest -q -m soak

lint: setup
	$(BIN)/ruff check tuner tests bench
	$(BIN)/mypy tuner
	$(BIN)/lint-imports  # the import contract in pyproject.toml

bench-quality: setup
	$(BIN)/python bench/quality_nips.py

bench-throughput: setup
	$(BIN)/python bench/throughput.py

bench-overhead: setup
	$(BIN)/python bench/overhead.py

bench-study: setup
	$(BIN)/python bench/study_nips.py

bench-storage: setup
	$(BIN)/python bench/storage.py

bench-scale: setup
	$(BIN)/python bench/scale.py

bench-report: setup
	$(BIN)/python bench/report.py

# tuner against HF Trainer.hyperparameter_search, plain Optuna and random search; resumes a stopped run
bench-h2h: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.head_to_head

bench-h2h-quick: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.head_to_head --quick

clean:
	rm -rf $(VENV) runs tuner.db
