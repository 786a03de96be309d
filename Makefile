# Set-up and the everyday commands. Works on a fresh machine that reaches only PyPI.
# A user with a GPU installs their CUDA torch into .venv first; the set-up keeps it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= face,train,eval,video,app,dev,reference
export HF_HUB_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-all test-parity test-browser browser-deps app lint style bench gpu-wheels clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# torch: keep any installed build (a user's CUDA torch); else the CPU build 2.13.0.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@# open_clip_torch ships CLIP's BPE vocabulary; its own deps (torchvision) are not needed.
	$(PY) -m pip install -q --no-deps "open_clip_torch>=2.20"
	@touch $@

setup: $(VENV)/.installed

demo: setup
	@test -f .cache/tiny-model/model_index.json || $(VENV)/bin/instantportrait init-tiny .cache/tiny-model
	$(VENV)/bin/instantportrait edit examples/astronaut.png \
	  --prompt "wearing a 1920s flapper dress, feathered headband" \
	  --model .cache/tiny-model --seed 0 --output outputs/demo --overwrite

test: setup
	$(PY) -m pytest -q

test-all: setup
	INSTANTPORTRAIT_SLOW=1 $(PY) -m pytest -q

# The face stack against the reference code (part of `make test`; the extra [reference]).
test-parity: setup
	$(PY) -m pytest -q -m parity tests/faces

# Debian's Chromium for the browser test (Playwright's own browser download is not used).
browser-deps:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

test-browser: setup browser-deps
	$(PY) -m pytest -q -m browser tests/app

# The web app on the tiny bundle (http://127.0.0.1:7860).
app: setup
	@test -f .cache/tiny-model/model_index.json || $(VENV)/bin/instantportrait init-tiny .cache/tiny-model
	$(VENV)/bin/instantportrait app --edit-model .cache/tiny-model

lint: setup
	$(VENV)/bin/ruff check --no-cache src tests benchmarks comfyui
	$(VENV)/bin/ruff format --no-cache --check src tests benchmarks comfyui

style: setup
	$(VENV)/bin/ruff check --fix src tests benchmarks comfyui
	$(VENV)/bin/ruff format src tests benchmarks comfyui

bench: setup
	$(VENV)/bin/instantportrait bench --quick

# The wheels the GPU suite needs on a lent device machine (Python 3.12, no network, no
# diffusers or open_clip_torch there), at this venv's versions, into .whl/ (ignored); the
# device run carries .whl and installs them with --no-deps (docs/performance.md).
gpu-wheels: setup
	@mkdir -p .whl
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
	  diffusers==$$($(PY) -c "import diffusers; print(diffusers.__version__)") \
	  open_clip_torch==$$($(PY) -c "import importlib.metadata as m; print(m.version('open_clip_torch'))")

clean:
	rm -rf .cache outputs .pytest_cache build src/*.egg-info
