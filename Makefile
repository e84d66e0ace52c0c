# Two commands for a fresh machine: `make demo` (the main job) and `make test`.
# Each creates or reuses a local virtual environment in .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# Prefer a torch wheel that this machine keeps on local disk (CPU build) over a multi-GB download.
TORCH_SPEC ?= $(or $(firstword $(wildcard /opt/wheels/torch-*.whl)),torch)
# evo: the official API aligns predicted cameras with its Umeyama (pure numpy; its other deps are unused).
ORACLE := depth-anything-3==0.1.1 evo==1.38.1
DEMO := demo_out

.PHONY: install test demo tiny-model tiny-model-test clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	@# open3d (imported by ns-export) needs the system library libusb; install it where it is missing and we may.
	dpkg -s libusb-1.0-0 >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq libusb-1.0-0) || true
	@# Pin the torch already installed, so pip picks the torchvision built for it instead of replacing torch.
	@# nuscenes-devkit (a nerfstudio dependency) pulls the GUI opencv-python: pin it to the headless build's
	@# version, then reinstall the headless build, so the cv2 files on disk are headless 4.10 whatever the order.
	$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/pins.txt
	echo "opencv-python==4.10.0.84" >> $(VENV)/pins.txt
	$(PIP) install -q -c $(VENV)/pins.txt -e ".[nerfstudio,test]"
	$(PIP) install -q --no-deps --force-reinstall opencv-python-headless==4.10.0.84
	@# A CUDA-only torchvision beside a CPU torch: declare its two missing ops (no-op where it imports as is).
	$(PY) -m nerfstudio_plugin.torchvision_compat --install
	$(PIP) install -q --no-deps --target $(VENV)/oracle $(ORACLE)
	@# The viewer's browser test (headless Chromium; skipped where it cannot be installed). viser comes with nerfstudio.
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || true
	touch $@

install: $(VENV)/.installed

# Lint, format and the architecture contracts first (seconds), then the tests. Here a skipped test fails
# (tests/conftest.py): a missing oracle, browser or scene must not let the run pass; only CUDA-only tests skip.
test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache
	DA3_SPLAT_STRICT_SKIPS=1 $(PY) -m pytest -q tests

demo: $(VENV)/.installed
	$(PY) -m da3_splat.cli demo $(DEMO) --overwrite $(if $(VIEW),--view,)

# Reproduces the bundled da3-tiny-synthetic from scratch on 2 CPU cores: synthetic train/held-out scenes, then
# stage 1 (backbone + depth/ray/camera heads, DA3 depth-ray losses) and stage 2 (NVS head, geometry frozen).
SYNTH := data/synthetic
TINY_WEIGHTS := da3_splat/weights/da3-tiny-synthetic
TINY_RUNS := outputs/tiny-geometry outputs/tiny-geometry-finish outputs/tiny-nvs
SYNTHESISE := $(PY) -m da3_splat.cli make-synthetic --overwrite
tiny-model: $(VENV)/.installed
	@# Held-out scenes (seed 2000) at both training sizes; the test set (seed 5000) is tiny-model-test's alone.
	$(SYNTHESISE) $(SYNTH)/val --scenes 20 --frames 48 --height 135 --width 240 --seed 2000
	$(SYNTHESISE) $(SYNTH)/val-small --scenes 20 --frames 48 --height 72 --width 128 --seed 2000
	@# Stage 1 (geometry) sees many short scenes, a quarter to two fifths of them rotation-only pans; stage 2 (NVS)
	@# needs long trajectories for its 24-48-frame windows.
	$(SYNTHESISE) $(SYNTH)/train8-small --scenes 3000 --frames 8 --height 72 --width 128 --seed 7000
	$(SYNTHESISE) $(SYNTH)/pan8-small --scenes 2000 --frames 8 --height 72 --width 128 --trajectories pan --seed 7100
	$(SYNTHESISE) $(SYNTH)/train8 --scenes 2000 --frames 8 --height 135 --width 240 --seed 7000
	$(SYNTHESISE) $(SYNTH)/pan8 --scenes 600 --frames 8 --height 135 --width 240 --trajectories pan --seed 7100
	$(SYNTHESISE) $(SYNTH)/train --scenes 240 --frames 48 --height 135 --width 240 --seed 1000
	@# Stage 1a at 70x126, 1b at 126x224 from 1a's weights (a resolution curriculum), 2: the NVS head.
	$(PY) -m da3_splat.cli train tiny-synthetic-geometry -o outputs/tiny-geometry --overwrite --no-progress
	$(PY) -m da3_splat.cli train tiny-synthetic-geometry-finish -o outputs/tiny-geometry-finish --overwrite --no-progress
	$(PY) -m da3_splat.cli train tiny-synthetic -o outputs/tiny-nvs --overwrite --no-progress
	mkdir -p $(TINY_WEIGHTS) && cp outputs/tiny-nvs/model/config.json outputs/tiny-nvs/model/model.safetensors $(TINY_WEIGHTS)/
	$(PY) benchmarks/nvs_tiny.py --scenes $(SYNTH)/val --runs $(TINY_RUNS)
	$(PY) benchmarks/train_curves.py $(TINY_RUNS)

# The held-out test set (its own seed, never used while developing): scored once, for the final report. Not seed
# 3000: benchmarks/refine.py has scored scenes of that seed.
tiny-model-test: $(VENV)/.installed
	$(SYNTHESISE) $(SYNTH)/test --scenes 20 --frames 48 --height 135 --width 240 --seed 5000
	$(PY) benchmarks/nvs_tiny.py --scenes $(SYNTH)/test --out benchmarks/results/nvs_tiny_test.md

clean:
	rm -rf $(VENV) $(DEMO)
