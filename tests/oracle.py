"""The official `depth-anything-3==0.1.1` package as a numerical oracle (tests only, never library code).

Builds the official nets with random weights, perturbs every tensor (the official init leaves pos-embed, norms
and layer scales at trivial values that would hide mistakes), and saves them the way the Hub files are saved.
"""

from __future__ import annotations

import json
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

# `make test` installs the oracle with --no-deps into its own folder, outside the project's environment, so
# that its unmet pins never touch the project's dependency set.
ORACLE_SITE = Path(__file__).resolve().parents[1] / ".venv" / "oracle"


def _stub(name: str, **attrs) -> None:
    if name not in sys.modules:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod


def prepare() -> None:
    """Make `depth_anything_3` importable: its folder on sys.path, and stand-ins for imports it makes at
    module level but that parity tests never exercise."""
    if ORACLE_SITE.is_dir() and str(ORACLE_SITE) not in sys.path:
        sys.path.append(str(ORACLE_SITE))
    try:
        import evo.core.trajectory  # noqa: F401
    except ImportError:  # trajectory alignment; GT-scale alignment then falls back to scale 1
        for name in ("evo", "evo.core"):
            _stub(name)
        _stub("evo.core.trajectory", PosePath3D=object)
    try:
        import opt_einsum_fx  # noqa: F401
    except ImportError:  # e3nn imports it; only e3nn's tensor products (unused here) need it
        _stub("opt_einsum_fx", jitable=lambda m: m, optimize_einsums_full=lambda m, *a, **k: m)


def _import_error() -> str | None:
    """Why the oracle cannot be imported (None when it can)."""
    try:
        prepare()
        import depth_anything_3  # noqa: F401

        return None
    except Exception as e:  # any failure means no parity check can run; the reason goes into the skip
        return f"{type(e).__name__}: {e}"


def official_api(wrapper):
    """The official high-level `DepthAnything3` (with its `inference()`) around the net of `build_official`.

    Its module imports export back-ends (moviepy, pycolmap) that inference without export never calls."""
    prepare()
    import importlib.util

    for names in (("moviepy", "moviepy.editor"), ("pycolmap",)):
        if names[0] not in sys.modules and importlib.util.find_spec(names[0]) is None:
            for name in names:
                _stub(name)
    from depth_anything_3.api import DepthAnything3

    api = DepthAnything3.__new__(DepthAnything3)
    torch.nn.Module.__init__(api)
    from depth_anything_3.utils.io.input_processor import InputProcessor
    from depth_anything_3.utils.io.output_processor import OutputProcessor

    api.model_name, api.config, api.device = "oracle", None, None
    api.model = wrapper.model
    api.input_processor, api.output_processor = InputProcessor(), OutputProcessor()
    return api


def official_sh_helpers():
    """The official SH helpers with e3nn's functions bound (they stay unset if e3nn failed on first import)."""
    pytest.importorskip("e3nn")
    prepare()
    from depth_anything_3.utils import sh_helpers
    from e3nn.o3 import matrix_to_angles, wigner_D

    sh_helpers.matrix_to_angles, sh_helpers.wigner_D = matrix_to_angles, wigner_D
    return sh_helpers


_ORACLE_ERROR = _import_error()
requires_oracle = pytest.mark.skipif(
    _ORACLE_ERROR is not None, reason=f"official depth-anything-3 package cannot be imported: {_ORACLE_ERROR}"
)


def build_official(name: str, seed: int = 0, noise: float = 0.02):
    """Official net with every tensor perturbed, wrapped so its state_dict has the Hub's `model.` prefix."""
    prepare()
    import logging

    logging.getLogger("depth_anything_3").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from depth_anything_3.cfg import create_object, load_config
        from depth_anything_3.registry import MODEL_REGISTRY

        torch.manual_seed(seed)
        net = create_object(load_config(MODEL_REGISTRY[name])).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.state_dict().values():
            if p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=g) * noise)
    wrapper = torch.nn.Module()
    wrapper.model = net
    return wrapper


def save_hub_layout(wrapper, folder: Path, model_name: str) -> Path:
    """config.json + model.safetensors written with safetensors' save_model, which de-duplicates shared
    tensors exactly like the official `save_pretrained` (and so like the files on the Hub)."""
    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    save_model(wrapper, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_name": model_name}))
    return folder


def key_dump(name: str) -> dict[str, tuple[int, ...]]:
    """The reference key list shipped in ../shared/reference/da3-keys."""
    path = Path(__file__).resolve().parents[2] / "shared" / "reference" / "da3-keys" / f"{name}.txt"
    if not path.is_file():
        pytest.skip(f"reference key dump not found at {path} (../shared is beside the checkout in CI)")
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        out[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(|b|), a scale-aware error for tensors of any magnitude."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))
