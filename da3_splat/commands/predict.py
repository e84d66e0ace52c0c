"""`da3-splat predict`: images or a video in; depth, confidence, cameras and a coloured point cloud out.

Heavy modules (torch, the model) are imported inside :func:`run_predict`, so that building the command line
and ``--help`` stay fast.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from da3_splat import colmap_export
from da3_splat.errors import InputError
from da3_splat.export import DEFAULT_CONF_PERCENTILE, DEFAULT_MAX_POINTS
from da3_splat.inputs import run_model_on_inputs
from da3_splat.progress import progress_bar
from da3_splat.runtime import DEFAULT_MODEL


@dataclass
class PredictConfig:
    """Depth, cameras and a coloured point cloud from images or a video, with Depth Anything 3.

    Writes OUT/images, OUT/depth (.npz, .png), OUT/confidence, OUT/transforms.json (nerfstudio), OUT/points.ply,
    and with --colmap a COLMAP sparse model in OUT/sparse/0."""

    input: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="INPUT")]
    """An image, a folder of images (not recursive), or a video (.mp4 .mov .avi .mkv .webm)."""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",), metavar="OUT")]
    """Output folder; it must be new or empty unless --overwrite is given."""
    model: str = DEFAULT_MODEL
    """Weights: Hugging Face repo id, folder with config.json + model.safetensors, .safetensors file, random:CONFIG."""
    process_res: int | None = None
    """Longest side, in pixels, of the images the network sees (then rounded to multiples of 14)
    (default: the model's own: 504 for the official models, the training resolution for models trained here)."""
    poses: Path | None = None
    """Known cameras: a nerfstudio transforms.json (or its folder), matched by file name; outputs use its frame."""
    overwrite: bool = False
    """Write into a non-empty OUT, replacing the files of a previous run."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to run the model: auto picks cuda when available."""
    video_stride: int | Literal["auto"] = 1
    """Video input: keep every N-th frame, or "auto": frames spaced evenly in image motion (with --max-frames: that
    many). Black and duplicate frames are always dropped."""
    max_frames: int | None = None
    """Video input: keep at most this many frames (all when not given)."""
    conf_percentile: float = DEFAULT_CONF_PERCENTILE
    """points.ply keeps pixels whose confidence is at or above this percentile over all views."""
    max_points: int = DEFAULT_MAX_POINTS
    """points.ply holds at most this many points (random subset, fixed seed)."""
    chunk_size: int | None = None
    """Run DA3 on chunks of this many neighbouring views (input order), merged into one frame on the views they
    share: memory depends on the chunk size, not on the number of views (default: all views in one pass)."""
    chunk_overlap: int | None = None
    """Views shared by consecutive chunks (default: a quarter of --chunk-size, at least 2; at least 2 without
    --poses, as the chunks are aligned on them)."""
    loop_closure: bool = False
    """With --chunk-size and no --poses: find places the capture visits again (frames that look alike, at least
    two chunks apart), measure the drift there with one extra pass each, and spread it over the chunks."""
    max_merge_residual: float | None = None
    """With --chunk-size and no --poses: how far the views two chunks share may still disagree after the chunks'
    alignment (RMS over the scene's extent) before the merge is refused (default: 0.05). A model whose passes
    agree less needs a looser gate: the bundled tiny model needs about 0.15 on some paths
    (benchmarks/results/streaming_gate.md)."""
    pose_solver: Literal["decoder", "matches"] | None = None
    """Pose-free cameras from the camera decoder, or from the model's own patch matches lifted with its depth
    (``model.match_pose``; better for models trained here with --loss.matching); default: the model's setting."""
    use_ray_pose: bool = False
    """Cameras from the ray head's pose solver instead of the camera decoder (slower, often more accurate)."""
    colmap: bool = False
    """Also write the cameras and the confident points (the pixels points.ply keeps) as a COLMAP sparse model:
    OUT/sparse/0 (binary; for gsplat, 3DGS, nerfstudio's colmap dataparser) and a text copy in OUT/sparse/0_text.
    Needs pycolmap: pip install "da3-splat[colmap]"."""


# --------------------------------------------------------------------------------------------------
# Validation (cheap, before any heavy work)


def _check_config(cfg: PredictConfig) -> None:
    if cfg.process_res is not None and cfg.process_res < 14:
        raise InputError(f"--process-res must be at least 14, got {cfg.process_res}")
    if cfg.video_stride != "auto" and cfg.video_stride < 1:
        raise InputError(f"--video-stride must be at least 1 or auto, got {cfg.video_stride}")
    if cfg.max_frames is not None and cfg.max_frames < 1:
        raise InputError(f"--max-frames must be at least 1, got {cfg.max_frames}")
    if not 0 <= cfg.conf_percentile < 100:
        raise InputError(f"--conf-percentile must be in [0, 100), got {cfg.conf_percentile}")
    if cfg.max_points < 1:
        raise InputError(f"--max-points must be at least 1, got {cfg.max_points}")
    if cfg.colmap:
        colmap_export.require_pycolmap()  # one line, before the model loads


def _check_no_clobber(image_paths: list[Path], names: list[str], out: Path) -> None:
    inputs = {os.path.realpath(p) for p in image_paths}
    for name in names:
        for rel in (f"images/{name}.png", f"depth/{name}.png", f"confidence/{name}.png"):
            if os.path.realpath(out / rel) in inputs:
                raise InputError(f"writing {out / rel} would overwrite an input image; choose another output folder")


def run_predict(cfg: PredictConfig, console=None, out_console=None) -> dict:
    """Run ``da3-splat predict``; returns the prediction.json summary. User errors raise InputError/WeightsError.

    Everything that can be checked cheaply (input, output folder, poses file, file-name matching) is checked
    before the model loads; images are decoded after it, so a bad weight source fails fast too.
    """
    from rich.console import Console

    console = console or Console(stderr=True, soft_wrap=True)
    out_console = out_console or Console(soft_wrap=True, highlight=False)
    t_start = time.perf_counter()
    _check_config(cfg)
    model, pred, names, device, timings = run_model_on_inputs(
        cfg, _check_no_clobber, console, needs_cameras="--colmap" if cfg.colmap else None, use_ray_pose=cfg.use_ray_pose
    )

    from da3_splat.export import SUMMARY_FILE, write_prediction
    from da3_splat.files import write_json

    summary = {
        "model": cfg.model,
        "model_name": model.config.model_name,
        "input": str(cfg.input),
        "device": device,
        "process_res": model.process_res_for(cfg.process_res),
        "poses": None if cfg.poses is None else str(cfg.poses),
        "use_ray_pose": cfg.use_ray_pose,
        "pose_solver": model.config.pose_solver,
        "streaming": pred.extra.get("streaming"),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    if not cfg.colmap and colmap_export.recorded_model(cfg.output):  # --overwrite: its cameras would not match
        colmap_export.remove_model(cfg.output)
    with progress_bar(console) as bar:
        total = pred.num_views + (3 if pred.extrinsics is not None else 1) + int(cfg.colmap)
        task = bar.add_task("Writing outputs", total=total)
        info = write_prediction(
            pred,
            cfg.output,
            names,
            conf_percentile=cfg.conf_percentile,
            max_points=cfg.max_points,
            summary=summary,
            progress=lambda step: bar.advance(task),
        )
        if cfg.colmap:
            t0 = time.perf_counter()
            info["colmap"] = colmap_export.write_prediction_model(
                pred, cfg.output, names, conf_percentile=cfg.conf_percentile, max_points=cfg.max_points
            )
            info["timings_s"]["colmap"] = round(time.perf_counter() - t0, 3)
            write_json(cfg.output / SUMMARY_FILE, info)
            bar.advance(task)
    report(info, cfg.output, time.perf_counter() - t_start, out_console)
    return info


def report(info: dict, out: Path, seconds: float, console) -> None:
    H, W = info["processed_size"]
    if info.get("poses"):
        units = "the units of the given poses"
    else:
        units = "metres" if info["is_metric"] else "relative units (scale is arbitrary)"
    console.print(
        f"[green]Done:[/] {info['num_views']} view(s) at {W}x{H} in {seconds:.1f} s "
        f"(inference {info['timings_s']['inference']:.1f} s); depth in {units}",
        highlight=False,
    )
    rows = [
        ("images/", "the processed input images"),
        ("depth/", "depth + confidence per view (.npz), colourised depth (.png)"),
        ("confidence/", "confidence maps (.png)"),
    ]
    if info["has_cameras"]:
        rows += [
            ("transforms.json", f"cameras, nerfstudio convention (ns-train splatfacto --data {out})"),
            (
                "points.ply",
                f"{info['num_points']:,} coloured points (confidence >= {info['conf_percentile']:g}th pct.)",
            ),
        ]
    if info.get("colmap"):
        model = info["colmap"]
        text = f"; text copy in {model['text_path']}/" if model["text_path"] else ""
        rows.append(
            (
                f"{model['path']}/",
                f"COLMAP sparse model of images/: {model['num_images']} PINHOLE cameras, "
                f"{model['num_points']:,} points{text}",
            )
        )
    rows.append(("prediction.json", "summary and timings"))
    console.print(f"Outputs in [bold]{out}[/]:", highlight=False)
    for name, what in rows:
        console.print(f"  {name:<16} {what}", highlight=False)
