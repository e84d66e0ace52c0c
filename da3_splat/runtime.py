"""Where and with what a command runs: the device, and the model from any source a user can name.

Model sources (one parser for every command and the trainer):
- a Hugging Face repo id, a folder with config.json + model.safetensors, a .safetensors file, or the name of a
  model shipped in the package (``da3-tiny-synthetic``);
- ``random:NAME``: a registered architecture with random weights (tests);
- ``arch:FILE``: an architecture JSON (absolute, relative, or under the shipped ``configs/``) with random weights.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from da3_splat.errors import InputError

DEFAULT_MODEL = "depth-anything/DA3-SMALL"
RANDOM_PREFIX = "random:"
ARCH_PREFIX = "arch:"
# Training presets and the tiny architecture, shipped inside the package (works from a wheel too).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'; 'cuda' without CUDA is an input error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: CUDA is not available on this machine (use --device cpu)")
    return name


def read_architecture(src: str):
    """The DA3Config of ``arch:FILE``."""
    from da3_splat.model import DA3Config

    path = Path(src[len(ARCH_PREFIX) :])
    if not path.exists() and (CONFIG_DIR / path).exists():  # presets name files under configs/
        path = CONFIG_DIR / path
    try:
        return DA3Config.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{src}: cannot read the architecture ({e})") from None


def load_model(src: str, device: str = "cpu", console=None, seed: int | None = 0):
    """The DA3 model named by ``src`` (see the module doc) on ``device``. Random weights are drawn after
    ``torch.manual_seed(seed)`` (``seed=None``: from the current random state) and announced on ``console``."""
    import torch

    from da3_splat.model import CONFIGS, DA3

    if src.startswith((RANDOM_PREFIX, ARCH_PREFIX)):
        if src.startswith(RANDOM_PREFIX):
            name = src[len(RANDOM_PREFIX) :]
            if name not in CONFIGS:
                raise InputError(f"unknown config {name!r} in {src}; choose one of {', '.join(sorted(CONFIGS))}")
            config = name
        else:
            config = read_architecture(src)
        if console is not None:
            console.print(f"[yellow]warning:[/] {src}: random weights, the outputs are meaningless (for tests only)")
        if seed is not None:
            torch.manual_seed(seed)
        return DA3.from_config(config).to(device)
    # The Hub client logs every retry when offline; the one-line WeightsError says what to do instead.
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    return DA3.from_pretrained(src, device=device)


def set_pose_solver(model, solver: str | None) -> None:
    """Where the model's pose-free cameras come from (``DA3Config.pose_solver``: "decoder" or "matches"), for
    this session; None keeps the setting saved with the weights."""
    if solver is not None:
        model.config = replace(model.config, pose_solver=solver)
