# `make quickstart` and `make test` set up .venv the first time (scripts/venv.sh: torch first, then
# finetune with its EXTRAS), reuse it after that, and run the offline quickstart or the test suite;
# `make venv` only sets up.
#
# Settings, given on the command line (`make test TORCH_INDEX=...`):
#   PYTHON       a Python 3.10+; default: the first of python3, python3.13 ... python3.10 on PATH
#   VENV         where the environment lives
#   TORCH        the torch requirement, installed before anything else
#   TORCH_INDEX  a PyTorch wheel index for another build (CUDA, ROCm, CPU); default: pip's own index
#   EXTRAS       pyproject.toml extras: dev (pytest), sweep (Optuna sweeper, joblib/SLURM launchers)
#   ARGS         more Hydra overrides for the quickstart, e.g. ARGS="trainer.epochs=1"
#   PYTEST_ARGS  more pytest arguments, e.g. PYTEST_ARGS="tests/test_config.py -x"
PYTHON      ?=
VENV        ?= .venv
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS      ?= dev,sweep
ARGS        ?=
PYTEST_ARGS ?=
export PYTHON VENV TORCH TORCH_INDEX EXTRAS

.PHONY: quickstart test venv

quickstart: venv
	$(VENV)/bin/python train.py experiment=quickstart $(ARGS)

test: venv
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

venv:
	@sh scripts/venv.sh
