"""`da3-splat make-synthetic`: synthetic DL3DV-style scenes (:mod:`da3_splat.data.synthetic`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from da3_splat.data.synthetic import TRAJECTORIES, SyntheticConfig, make_synthetic
from da3_splat.errors import InputError


@dataclass
class MakeSyntheticCommand:
    """Synthetic DL3DV-style scenes (textured rooms with exact depth), for training, evaluation and demos.

    Writes OUT/scene_0000/{transforms.json, images_4/, depths_4/, eval_index.json, scene.json}, ..."""

    out: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="OUT")]
    """Output folder (created); a run that would write into existing scene folders is refused unless --overwrite."""
    scenes: int = 1
    """Number of scenes."""
    frames: int = 60
    """Frames per scene."""
    height: int = 270
    """Rendered height (the files state intrinsics at 4x this, like DL3DV)."""
    width: int = 480
    """Rendered width."""
    trajectories: tuple[str, ...] = TRAJECTORIES
    """Camera path kinds, one drawn per scene: orbit, dolly, figure8, and (opt-in) pan, a handheld pan with little
    parallax."""
    seed: int = 0
    """Seed: the same seed gives the same bytes, whatever the number of workers."""
    workers: int | None = None
    """Processes (default: all cores)."""
    overwrite: bool = False
    """Replace existing scene folders of the same names."""


def run_make_synthetic(cmd: MakeSyntheticCommand) -> list[Path]:
    if cmd.scenes < 1:
        raise InputError("--scenes must be at least 1")
    try:
        cfg = SyntheticConfig(
            frames=cmd.frames, height=cmd.height, width=cmd.width, trajectories=cmd.trajectories, seed=cmd.seed
        )
    except ValueError as e:
        raise InputError(str(e)) from None
    start = time.perf_counter()
    paths = make_synthetic(
        cmd.out,
        cmd.scenes,
        cfg,
        workers=cmd.workers,
        overwrite=cmd.overwrite,
        progress=lambda path: print(f"wrote {path}", flush=True),
    )
    print(f"{len(paths)} scene(s) in {time.perf_counter() - start:.1f} s -> {cmd.out}")
    return paths
