# Set-up and the two everyday commands. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
# The CPU build that lies on this machine's disk; set TORCH="torch" (or a CUDA wheel) elsewhere.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup lock demo test soak lint bench-quality bench-throughput bench-overhead bench-study bench-report bench-storage bench-h2h bench-h2h-quick bench-h2h-table bench-scale bench-table bench-replay clean

# Every extra: what `make setup` installs and what requirements.lock pins.
EXTRAS := dev,db,tensorboard,dashboard,bench
LOCK := requirements.lock

# Installs from the lock: pyproject.toml keeps ranges for users, the lock pins what the tests ran with
# (torch apart, installed first so that no other build is pulled in). pip fails here when the lock no
# longer satisfies pyproject.toml; tests/test_requirements_lock.py says which requirement.
$(BIN)/tuner: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -c $(LOCK) -e ".[$(EXTRAS)]"
	touch $(BIN)/tuner

setup: $(BIN)/tuner

# Refreshes requirements.lock: the newest versions that satisfy pyproject.toml, resolved in a new
# virtualenv beside the project's (then `make setup` reinstalls from it).
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q "$(TORCH)"
	.venv-lock/bin/python -m pip install -q -e ".[$(EXTRAS)]"
	{ echo "# make lock: every package that 'pip install -e .[$(EXTRAS)]' resolved, torch apart,"; \
	  echo "# on $$(.venv-lock/bin/python -c 'import platform; print("Python", platform.python_version(), platform.machine())')."; \
	  echo "# make setup installs with it as a constraints file; pyproject.toml keeps the ranges."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | grep -iv '^torch=='; } > $(LOCK)
	rm -rf .venv-lock

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

# Live check of the replay on the NIPS table's task (its 720 training documents): the optuna-examples recipe
# against tuner, 5 paired seeds of 700 CPU s (~1.2 h on 2 cores); resumes a stopped run
bench-h2h-table: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.head_to_head --systems optuna tuner --train-docs 720 --val-docs 120 \
		--test-docs 120 --budget 700 --seeds 0 1 2 3 4 --output head_to_head_table_task.json --no-markdown

# Learning-curve tables for bench/replay.py (hours; a stopped run resumes). NIPS is sized as the head-to-head's
# task (its 2- and 3-layer cuts, batch 8 and 16, learning rate 1e-6 to 1e-2) on 720 training documents.
TABLE_NIPS := --study studies/nips.toml --set 'search.learning_rate=[1e-6, 1e-2]' \
	--set 'search.backbone=[{name="sentence-transformers/all-MiniLM-L6-v2", config={num_hidden_layers=3}}, {name="sentence-transformers/all-MiniLM-L6-v2", config={num_hidden_layers=2}}]' \
	--set 'search.max_epochs=[2]' --train-docs 720 --val-docs 120 --test-docs 120
# ROCStories: the same backbones, batch sizes and range on its five-sentence stories (about a third of a NIPS
# abstract's tokens), so 1,600 training stories.
TABLE_ROC := --study studies/rocstories.toml --set 'search.learning_rate=[1e-6, 1e-2]' --set 'search.batch_size=[8, 16]' \
	--set 'search.backbone=[{name="sentence-transformers/all-MiniLM-L6-v2", config={num_hidden_layers=3}}, {name="sentence-transformers/all-MiniLM-L6-v2", config={num_hidden_layers=2}}]' \
	--set 'search.max_epochs=[2]' --train-docs 1600 --val-docs 200 --test-docs 200
bench-table: setup
	$(BIN)/python -m bench.lc_table $(TABLE_NIPS) --output bench/results/lc_table_nips.json
	$(BIN)/python -m bench.lc_table $(TABLE_ROC) --output bench/results/lc_table_rocstories.json

# Every search policy replayed against the tables, 200 paired seeds each (minutes). The variants: tuner with
# one of its defaults undone; validating 4 times an epoch (trainer.val_check_interval = "auto"); Optuna's
# median pruner (3 trials before it prunes) for Hyperband; the study file's backbones the other way round (the baseline takes the first);
# a wider multiplier range with the baseline kept at 1.7 times the suggestion
ABLATIONS := --variant 'tuner_no_finder:finder=off' --variant 'tuner_no_baseline_finder:baseline_finder=false' \
	--variant 'tuner_finder_per_config:finder_scope=config' --variant 'tuner_validate_4_per_epoch:evals=all' \
	--variant 'tuner_median_pruner:pruner.type=median' --variant 'tuner_backbones_reversed:backbones_reversed=true' \
	--variant 'tuner_hyperband_rf2:pruner.reduction_factor=2' --variant 'tuner_hyperband_rf4:pruner.reduction_factor=4' \
	--variant 'tuner_tpe_startup3:sampler.n_startup_trials=3' --variant 'tuner_tpe_startup10:sampler.n_startup_trials=10' \
	--variant 'tuner_multiplier_half_to_2:finder_multiplier=[0.5,2]' --variant 'tuner_multiplier_1_to_4:finder_multiplier=[1,4]' \
	--variant 'tuner_multiplier_1_to_6_baseline_1.7:finder_multiplier=[1,6],finder_baseline=1.732'
bench-replay: setup
	$(BIN)/python -m bench.replay --seeds 200 --rates interpolate $(ABLATIONS)
	$(BIN)/python -m bench.replay --seeds 200 $(ABLATIONS)

clean:
	rm -rf $(VENV) runs tuner.db
