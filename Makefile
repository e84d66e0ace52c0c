# Two commands for a fresh machine: `make demo` (the main job) and `make test`.
# Each creates or reuses a local virtual environment in .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# Prefer a torch wheel that this machine keeps on local disk (CPU build) over a multi-GB download.
TORCH_SPEC ?= $(or $(firstword $(wildcard /opt/wheels/torch-*.whl)),torch)
ORACLE := depth-anything-3==0.1.1
# Offline default: random weights (the demo says so). Any Hub repo id, folder or .safetensors file works.
MODEL ?= random:da3-small
DEMO := demo_out

.PHONY: install test demo clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps --target $(VENV)/oracle "$(ORACLE)"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

demo: $(VENV)/.installed
	$(PY) -m da3_splat.cli make-synthetic $(DEMO)/scenes --scenes 1 --frames 24 --overwrite
	$(PY) -m da3_splat.cli predict $(DEMO)/scenes/scene_0000/images_4 -o $(DEMO)/predict --model $(MODEL) \
		--poses $(DEMO)/scenes/scene_0000/transforms.json --overwrite

clean:
	rm -rf $(VENV) $(DEMO)
