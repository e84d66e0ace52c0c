"""Viewer scenes from nerfstudio runs: a folder with config.yml (or that file, or a folder above runs: the newest
is taken). The Gaussians come from the newest nerfstudio_models/step-*.ckpt (splatfacto's ``gauss_params``, read
with ``torch.load(weights_only=True)``), the cameras from the dataset's transforms.json moved into the run's
normalised frame (dataparser_transforms.json). nerfstudio itself is not imported: config.yml is read with a YAML
loader that turns its python tags into plain data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from da3_splat.errors import InputError
from da3_splat.gaussians import SPLATFACTO_KEYS, Gaussians
from da3_splat.viewer.scene import CameraView, ViewScene, cameras_from_transforms

NS_CONFIG = "config.yml"
NS_MODELS = "nerfstudio_models"
NS_DATAPARSER_TRANSFORMS = "dataparser_transforms.json"


def _yaml_loader():
    """A safe YAML loader that reads nerfstudio's config.yml without nerfstudio: every ``!!python/...`` node
    becomes plain data (mappings, lists, strings), and pathlib paths become ``Path``."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct(loader, suffix, node):
        if isinstance(node, yaml.MappingNode):
            data = loader.construct_mapping(node, deep=True)
            if suffix.endswith("Path") and isinstance(data.get("args"), list):
                return Path(*map(str, data["args"]))
            return data
        if isinstance(node, yaml.SequenceNode):
            items = loader.construct_sequence(node, deep=True)
            return Path(*map(str, items)) if suffix.endswith("Path") and items else items
        return loader.construct_scalar(node)

    Loader.add_multi_constructor("tag:yaml.org,2002:python/", construct)
    return Loader


def read_ns_config(file: Path) -> dict:
    import yaml

    try:
        data = yaml.load(file.read_text(encoding="utf-8"), Loader=_yaml_loader())  # noqa: S506 -- safe loader
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise InputError(f"{file}: not a readable nerfstudio config ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{file}: not a nerfstudio config (expected a mapping)")
    return data


def find_ns_config(path: Path, max_depth: int = 4) -> Path | None:
    """config.yml for PATH: the file itself, PATH/config.yml, or the newest run config.yml below PATH."""
    if path.is_file():
        return path if path.suffix in (".yml", ".yaml") else None
    if (path / NS_CONFIG).is_file():
        return path / NS_CONFIG
    found = [p for d in range(1, max_depth + 1) for p in path.glob("/".join(["*"] * d + [NS_CONFIG]))]
    found = [p for p in found if (p.parent / NS_MODELS).is_dir()]
    return max(found, key=lambda p: (p.stat().st_mtime, str(p))) if found else None


def latest_checkpoint(models_dir: Path) -> Path | None:
    def step(p: Path) -> int:
        m = re.search(r"(\d+)", p.stem)
        return int(m.group(1)) if m else -1

    ckpts = sorted(models_dir.glob("*.ckpt"), key=lambda p: (step(p), p.name))
    return ckpts[-1] if ckpts else None


def gaussians_from_checkpoint(ckpt: Path) -> Gaussians:
    """splatfacto-style ``gauss_params`` from a nerfstudio checkpoint's pipeline state."""
    from da3_splat.sh import RGB2SH

    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- pickle and zip errors of many kinds
        raise InputError(f"{ckpt}: not a readable checkpoint ({str(e).splitlines()[0] if str(e) else e!r})") from None
    pipeline = state.get("pipeline", state) if isinstance(state, dict) else None
    params = {}
    for key, value in (pipeline or {}).items():
        head, _, name = key.rpartition(".")
        if head.endswith("gauss_params") and name in SPLATFACTO_KEYS:
            params[name] = value.float()
    missing = [k for k in SPLATFACTO_KEYS if k not in params]
    if missing:
        raise InputError(f"{ckpt}: no Gaussians in the pipeline state (missing gauss_params: {', '.join(missing)})")
    rest = params["features_rest"]
    dc = params["features_dc"]
    if rest.shape[-2] == 0:  # splatfacto with sh_degree 0 stores logit(rgb) as features_dc, not an SH coefficient
        dc, rest = RGB2SH(torch.sigmoid(dc)), None
    g = Gaussians.from_splatfacto_params(
        params["means"], params["scales"], params["quats"], dc, rest, params["opacities"]
    )
    keep = torch.isfinite(torch.cat([g.means, g.scales, g.quats, g.opacities[:, None]], 1)).all(1)
    return g[keep]


def _dataset_path(cfg: dict, run_dir: Path) -> Path | None:
    """The training data of a run. Relative paths in config.yml are relative to where ns-train ran, which is
    not recorded: try the current folder and the folder holding outputs/ (runs live in
    <there>/<output_dir>/<experiment>/<method>/<timestamp>)."""
    dm = (cfg.get("pipeline") or {}).get("datamanager") or {}
    roots = [Path.cwd()]
    out_parts = len(Path(cfg.get("output_dir") or "outputs").parts)
    if len(run_dir.parents) > 2 + out_parts:
        roots.append(run_dir.parents[2 + out_parts])
    for value in ((dm.get("dataparser") or {}).get("data"), dm.get("data"), cfg.get("data")):
        if not value:
            continue
        p = Path(value)
        for q in [p] if p.is_absolute() else [r / p for r in roots]:
            if q.exists():
                return q
    return None


def _cameras_in_run_frame(data: Path, run_dir: Path, longest: int) -> list[CameraView]:
    from da3_splat.data.transforms import transforms_file

    tf_file = data if data.suffix == ".json" else transforms_file(data)
    dp = run_dir / NS_DATAPARSER_TRANSFORMS
    if not tf_file.is_file() or not dp.is_file():
        return []
    cams = cameras_from_transforms(tf_file, longest, image_dirs=("images_2", "images_4", "images_8"))
    meta = json.loads(dp.read_text())
    T = np.eye(4)
    T[:3] = np.asarray(meta["transform"], dtype=np.float64).reshape(3, 4)
    s = float(meta.get("scale", 1.0))
    for c in cams:
        # nerfstudio: c2w' = T @ c2w, then translation * scale. T is a rigid motion, so the same applies to
        # OpenCV-axis c2w (the axis flip multiplies on the right).
        c2w = T @ c.c2w
        c2w[:3, 3] *= s
        c.c2w = c2w
    return cams


def load_nerfstudio_run(config_file: Path, longest: int = 160) -> ViewScene:
    cfg = read_ns_config(config_file)
    run_dir = config_file.parent
    models = str(cfg.get("relative_model_dir") or NS_MODELS)
    ckpt = latest_checkpoint(run_dir / models)
    if ckpt is None:
        raise InputError(f"{run_dir}: no checkpoint in {models}/ (train longer, or pass an exported PLY)")
    method = cfg.get("method_name") or "nerfstudio"
    scene = ViewScene(title=f"{method} run {run_dir} ({ckpt.name})", save_dir=run_dir)
    scene.gaussians = gaussians_from_checkpoint(ckpt)
    scene.up_hint = np.array([0.0, 0.0, 1.0])  # nerfstudio's dataparsers orient the scene z-up
    data = _dataset_path(cfg, run_dir)
    if data is not None:
        try:
            scene.cameras = _cameras_in_run_frame(data, run_dir, longest)
        except (InputError, ValueError, KeyError, OSError):
            scene.cameras = []  # the Gaussians alone are still worth showing
    return scene
