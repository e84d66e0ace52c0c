"""`da3-splat predict`: images or a video in; depth, confidence, cameras and a coloured point cloud out.

Heavy modules (torch, the model) are imported inside :func:`run_predict`, so that building the command line
and ``--help`` stay fast.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from da3_splat.errors import InputError
from da3_splat.export import DEFAULT_CONF_PERCENTILE, DEFAULT_MAX_POINTS

DEFAULT_MODEL = "depth-anything/DA3-SMALL"
RANDOM_PREFIX = "random:"


@dataclass
class PredictConfig:
    """Depth, cameras and a coloured point cloud from images or a video, with Depth Anything 3.

    Writes OUT/images, OUT/depth (.npz, .png), OUT/confidence, OUT/transforms.json (nerfstudio), OUT/points.ply."""

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
    video_stride: int = 1
    """Video input: keep every N-th frame."""
    max_frames: int | None = None
    """Video input: keep at most this many frames (all when not given)."""
    conf_percentile: float = DEFAULT_CONF_PERCENTILE
    """points.ply keeps pixels whose confidence is at or above this percentile over all views."""
    max_points: int = DEFAULT_MAX_POINTS
    """points.ply holds at most this many points (random subset, fixed seed)."""
    use_ray_pose: bool = False
    """Cameras from the ray head's pose solver instead of the camera decoder (slower, often more accurate)."""


# --------------------------------------------------------------------------------------------------
# Validation (cheap, before any heavy work)


def _check_config(cfg: PredictConfig) -> None:
    if cfg.process_res is not None and cfg.process_res < 14:
        raise InputError(f"--process-res must be at least 14, got {cfg.process_res}")
    if cfg.video_stride < 1:
        raise InputError(f"--video-stride must be at least 1, got {cfg.video_stride}")
    if cfg.max_frames is not None and cfg.max_frames < 1:
        raise InputError(f"--max-frames must be at least 1, got {cfg.max_frames}")
    if not 0 <= cfg.conf_percentile < 100:
        raise InputError(f"--conf-percentile must be in [0, 100), got {cfg.conf_percentile}")
    if cfg.max_points < 1:
        raise InputError(f"--max-points must be at least 1, got {cfg.max_points}")


def input_kind(path: Path) -> str:
    """'video', 'images' (a folder or one image file); raises InputError for anything else."""
    from da3_splat.model.preprocess import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

    if path.is_dir():
        return "images"
    if not path.exists():
        raise InputError(f"input not found: {path}")
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if suffix in IMAGE_EXTENSIONS:
        return "images"
    kinds = " ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS))
    raise InputError(f"unsupported input {path}: expected a folder, an image or a video ({kinds})")


def check_output_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"output folder {out} is not empty; pass --overwrite to replace its files")


def unique_names(paths: list[Path]) -> list[str]:
    """File stems, made unique (a.jpg and a.png become a_jpg and a_png; any clash left gets a number)."""
    counts = Counter(p.stem for p in paths)
    names = [p.stem if counts[p.stem] == 1 else p.name.replace(".", "_") for p in paths]
    seen: set[str] = set()
    for i, name in enumerate(names):
        while names[i] in seen:
            names[i] = f"{name}_{i}"
            name = names[i]
        seen.add(names[i])
    return names


def video_frame_names(n: int) -> list[str]:
    return [f"frame_{i + 1:05d}" for i in range(n)]


def _check_no_clobber(image_paths: list[Path], names: list[str], out: Path) -> None:
    inputs = {os.path.realpath(p) for p in image_paths}
    for name in names:
        for rel in (f"images/{name}.png", f"depth/{name}.png", f"confidence/{name}.png"):
            if os.path.realpath(out / rel) in inputs:
                raise InputError(f"writing {out / rel} would overwrite an input image; choose another output folder")


# --------------------------------------------------------------------------------------------------
# Known poses


def match_poses(poses_file, names: list[str], image_paths: list[Path] | None, sizes: list[tuple[int, int]]):
    """Cameras of a transforms.json for each input -> (w2c (S,4,4), K (S,3,3) at the inputs' sizes, warnings)."""
    from da3_splat.data.transforms import match_frames, read_transforms, select_cameras, transforms_file

    poses = read_transforms(poses_file)
    idx = match_frames(poses[0], names, image_paths, transforms_file(poses_file))
    return select_cameras(poses, idx, names, sizes)


# --------------------------------------------------------------------------------------------------
# The pipeline


def prepare_inputs(cfg, check_outputs):
    """What predict and splat check before the model loads -> (image paths, names, poses, device).

    The input (images, a folder or a video), the output folder, ``check_outputs(paths, names, out)`` (that no
    output would replace an input) and that every image has a camera in ``cfg.poses``; paths and names are None
    for a video (its frames are named once decoded)."""
    from da3_splat.data.transforms import match_frames, read_transforms, transforms_file
    from da3_splat.model.preprocess import list_images

    kind = input_kind(cfg.input)
    check_output_dir(cfg.output, cfg.overwrite)
    paths = names = None
    if kind == "images":
        paths = list_images(cfg.input)
        names = unique_names(paths)
        check_outputs(paths, names, cfg.output)
    poses = read_transforms(cfg.poses) if cfg.poses is not None else None
    if poses is not None and names is not None:
        match_frames(poses[0], names, paths, transforms_file(cfg.poses))
    return paths, names, poses, resolve_device(cfg.device)


def load_inputs(cfg, paths, names, poses, console):
    """Decode the inputs and pick their cameras -> (images, names, extrinsics or None, intrinsics or None)."""
    from da3_splat.data.transforms import match_frames, select_cameras, transforms_file

    images = decode_inputs(cfg, paths, console)
    names = names or video_frame_names(len(images))
    extrinsics = intrinsics = None
    if poses is not None:
        idx = match_frames(poses[0], names, paths, transforms_file(cfg.poses))
        extrinsics, intrinsics, warnings = select_cameras(poses, idx, names, [im.shape[:2] for im in images])
        for w in warnings:
            console.print(f"[yellow]warning:[/] {w}", highlight=False)
    return images, names, extrinsics, intrinsics


def load_model_and_inputs(cfg, paths, names, poses, device: str, console, needs_cameras: str | None = None):
    """Load the model, then decode the inputs (so a bad weight source fails before the slow part); ->
    model, (images, names, extrinsics, intrinsics), timings. ``needs_cameras``: the command's name, when it
    refuses models that predict no cameras."""
    t0 = time.perf_counter()
    with _status(console, f"Loading model {cfg.model} ..."):
        model = load_model(cfg.model, device, console)
    if needs_cameras and not model.has_cameras:
        raise InputError(
            f"{model.config.model_name} predicts no cameras; {needs_cameras} needs an any-view model "
            f"(e.g. {DEFAULT_MODEL})"
        )
    timings = {"load_model": time.perf_counter() - t0}
    t0 = time.perf_counter()
    inputs = load_inputs(cfg, paths, names, poses, console)
    timings["load_inputs"] = time.perf_counter() - t0
    return model, inputs, timings


def load_model(src: str, device: str, console):
    import torch

    from da3_splat import DA3
    from da3_splat.model.config import CONFIGS

    if src.startswith(RANDOM_PREFIX):
        name = src[len(RANDOM_PREFIX) :]
        if name not in CONFIGS:
            raise InputError(f"unknown config {name!r} in --model {src}; choose one of {', '.join(sorted(CONFIGS))}")
        warning = f"--model {src}: random weights, the outputs are meaningless (for tests only)"
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
        torch.manual_seed(0)
        return DA3.from_config(name).to(device)
    # The Hub client logs every retry when offline; the one-line WeightsError says what to do instead.
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    return DA3.from_pretrained(src, device=device)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: CUDA is not available on this machine (use --device cpu)")
    return device


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    # Live displays only on a terminal: piped or logged output gets no spinner frames or blank lines.
    return Progress(*cols, console=console, transient=True, disable=not console.is_terminal)


def _status(console, message: str):
    return console.status(message) if console.is_terminal else contextlib.nullcontext()


def decode_inputs(cfg: PredictConfig, paths: list[Path] | None, console) -> list:
    """RGB uint8 arrays of the images ``paths``, or of the video's kept frames when ``paths`` is None."""
    from da3_splat.model.preprocess import load_image, read_video_frames

    if paths is None:
        if os.environ.get("DA3_SPLAT_DEBUG", "") in ("", "0"):
            os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own messages; we report one line
        with _status(console, f"Decoding {cfg.input.name} ..."):
            return read_video_frames(cfg.input, max_frames=cfg.max_frames, stride=cfg.video_stride)
    with _progress(console) as bar, ThreadPoolExecutor(max_workers=min(8, len(paths))) as pool:
        task = bar.add_task("Loading images", total=len(paths))
        images = []
        for img in pool.map(load_image, paths):
            images.append(img)
            bar.advance(task)
    return images


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
    paths, names, poses, device = prepare_inputs(cfg, _check_no_clobber)

    model, (images, names, extrinsics, intrinsics), timings = load_model_and_inputs(
        cfg, paths, names, poses, device, console
    )

    t0 = time.perf_counter()
    with _status(console, f"Running {model.config.model_name} on {len(images)} view(s) ({device}) ..."):
        pred = model.infer(
            images, extrinsics=extrinsics, intrinsics=intrinsics, process_res=cfg.process_res,
            use_ray_pose=cfg.use_ray_pose,
        )  # fmt: skip
    timings["inference"] = time.perf_counter() - t0
    del images

    from da3_splat.export import write_prediction

    summary = {
        "model": cfg.model, "model_name": model.config.model_name, "input": str(cfg.input), "device": device,
        "process_res": model.process_res_for(cfg.process_res),
        "poses": None if cfg.poses is None else str(cfg.poses),
        "use_ray_pose": cfg.use_ray_pose, "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }  # fmt: skip
    with _progress(console) as bar:
        task = bar.add_task("Writing outputs", total=pred.num_views + (3 if pred.extrinsics is not None else 1))
        info = write_prediction(
            pred, cfg.output, names, conf_percentile=cfg.conf_percentile, max_points=cfg.max_points,
            summary=summary, progress=lambda step: bar.advance(task),
        )  # fmt: skip
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
    rows.append(("prediction.json", "summary and timings"))
    console.print(f"Outputs in [bold]{out}[/]:", highlight=False)
    for name, what in rows:
        console.print(f"  {name:<16} {what}", highlight=False)
