"""`da3-splat splat`: images or a video in; a 3D Gaussian Splatting scene (splat.ply), its cameras, a preview and
a rendered camera path out.

Uses the checkpoint's GS head when it has one, else head-free Gaussians (one per pixel, from depth). Input
decoding, model loading and output checks are the library's (:mod:`da3_splat.inputs`). Heavy modules are imported inside :func:`run_splat`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import tyro

from da3_splat.errors import InputError
from da3_splat.export import DEFAULT_CONF_PERCENTILE
from da3_splat.progress import progress_bar, status
from da3_splat.runtime import DEFAULT_MODEL

if TYPE_CHECKING:
    import numpy as np

SPLAT_FILE = "splat.ply"
PREVIEW_FILE = "preview.png"
PATH_DIR = "path"
VIDEO_FILE = "path.mp4"
SUMMARY_FILE = "splat.json"
PREVIEW_MAX_VIEWS = 8  # input views shown in preview.png (evenly spaced)


@dataclass
class SplatConfig:
    """3D Gaussian Splatting from images or a video, with Depth Anything 3 (no training).

    Writes OUT/splat.ply (3DGS PLY), OUT/transforms.json + OUT/images (cameras, nerfstudio), OUT/preview.png
    (inputs next to renders at their cameras), OUT/path/ + OUT/path.mp4 (a rendered camera path), OUT/splat.json."""

    input: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="INPUT")]
    """An image, a folder of images (not recursive), or a video (.mp4 .mov .avi .mkv .webm)."""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",), metavar="OUT")]
    """Output folder; it must be new or empty unless --overwrite is given."""
    model: str = DEFAULT_MODEL
    """Weights: Hugging Face repo id, folder with config.json + model.safetensors, .safetensors file, random:CONFIG."""
    max_gaussians: int = 1_000_000
    """splat.ply holds at most this many Gaussians (neighbours are merged to fit)."""
    poses: Path | None = None
    """Known cameras: a nerfstudio transforms.json (or its folder), matched by file name; outputs use its frame."""
    process_res: int | None = None
    """Longest side, in pixels, of the images the network sees (then rounded to multiples of 14)
    (default: the model's own: 504 for the official models, the training resolution for models trained here)."""
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
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to run the model and the renderer: auto picks cuda when available."""
    overwrite: bool = False
    """Write into a non-empty OUT, replacing the files of a previous run."""
    video: bool = True
    """Render the camera path (--path) to OUT/path/ and OUT/path.mp4."""
    path: Literal["input", "interpolate", "orbit"] = "orbit"
    """Camera path: the input cameras, a smooth path through them, or an orbit around the scene."""
    path_frames: int = 16
    """Frames of the interpolated or orbit path (more: a smoother video, rendered for longer)."""
    video_size: int = 160
    """Longest side, in pixels, of the path frames (path/, path.mp4); never above the processed size.
    0: the processed size (full size; much slower on a CPU)."""
    fps: int = 8
    """Frame rate of path.mp4."""
    conf_percentile: float = DEFAULT_CONF_PERCENTILE
    """Keep the Gaussians of pixels whose depth confidence is at or above this percentile over all views."""
    video_stride: int | Literal["auto"] = 1
    """Video input: keep every N-th frame, or "auto": frames spaced evenly in image motion (with --max-frames: that
    many). Black and duplicate frames are always dropped."""
    max_frames: int | None = None
    """Video input: keep at most this many frames (all when not given)."""


def _check_config(cfg: SplatConfig) -> None:
    checks = [
        (cfg.process_res is None or cfg.process_res >= 14, f"--process-res must be at least 14, got {cfg.process_res}"),
        (cfg.max_gaussians >= 1, f"--max-gaussians must be at least 1, got {cfg.max_gaussians}"),
        (cfg.path_frames >= 1, f"--path-frames must be at least 1, got {cfg.path_frames}"),
        (cfg.video_size >= 0, f"--video-size must be 0 (full size) or positive, got {cfg.video_size}"),
        (cfg.fps >= 1, f"--fps must be at least 1, got {cfg.fps}"),
        (0 <= cfg.conf_percentile < 100, f"--conf-percentile must be in [0, 100), got {cfg.conf_percentile}"),
        (
            cfg.video_stride == "auto" or cfg.video_stride >= 1,
            f"--video-stride must be at least 1 or auto, got {cfg.video_stride}",
        ),
        (cfg.max_frames is None or cfg.max_frames >= 1, f"--max-frames must be at least 1, got {cfg.max_frames}"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)


def _check_inputs_kept(image_paths: list[Path], names: list[str], out: Path) -> None:
    """Refuse an OUT where our files would replace an input image (OUT = the image folder, with --overwrite)."""
    ours = [out / "images" / f"{n}.png" for n in names] + [out / PREVIEW_FILE]
    ours_real = {os.path.realpath(p) for p in ours}
    path_dir = os.path.realpath(out / PATH_DIR)
    for p in image_paths:
        real = os.path.realpath(p)
        if real in ours_real or os.path.dirname(real) == path_dir:
            raise InputError(f"writing into {out} could overwrite the input {p}; choose another output folder")


# --------------------------------------------------------------------------------------------------
# Pieces


def path_cameras(kind: str, w2c, K, n_frames: int, points=None):
    """(w2c (N, 4, 4), K (N, 3, 3)) torch tensors of the camera path ``kind`` through/around the inputs."""
    import torch

    from da3_splat.geometry import as_homogeneous
    from da3_splat.rendering.camera_path import interpolate_cameras, orbit_cameras, scene_center

    w2c = as_homogeneous(torch.as_tensor(w2c, dtype=torch.float32))
    K = torch.as_tensor(K, dtype=torch.float32)
    if kind == "input":
        return w2c, K
    if kind == "interpolate":
        steps = max(1, round((n_frames - 1) / (len(w2c) - 1))) if len(w2c) > 1 else 1
        return interpolate_cameras(w2c, K, steps)
    return orbit_cameras(w2c, K, n_frames, center=scene_center(w2c, points))


def preview_sheet(inputs: np.ndarray, renders: np.ndarray) -> np.ndarray:
    """Up to PREVIEW_MAX_VIEWS evenly spaced views, each as [input | render], two views per row."""
    import numpy as np

    from da3_splat.rendering.camera_path import preview_grid

    S = len(inputs)
    idx = np.unique(np.linspace(0, S - 1, min(S, PREVIEW_MAX_VIEWS)).round().astype(int))
    pairs = np.stack([img for i in idx for img in (inputs[i], renders[i])])
    return preview_grid(pairs, cols=4 if len(idx) > 1 else 2)


def _remove_stale(out: Path, names: list[str], keep_path_frames: int) -> None:
    """After --overwrite: drop a previous run's per-view images and path frames that this run did not write."""
    import json

    try:
        old = json.loads((out / SUMMARY_FILE).read_text()).get("views", [])
    except (OSError, ValueError, AttributeError):
        old = []
    for name in set(map(str, old)) - set(names):
        if name and "/" not in name and "\\" not in name and not name.startswith("."):
            (out / "images" / f"{name}.png").unlink(missing_ok=True)
    for frame in (out / PATH_DIR).glob("frame_*.png") if (out / PATH_DIR).is_dir() else []:
        stem = frame.stem[len("frame_") :]
        if not stem.isdigit() or int(stem) > keep_path_frames:
            frame.unlink()
    if keep_path_frames == 0:
        (out / VIDEO_FILE).unlink(missing_ok=True)


def _write_scene(out: Path, pred, names: list[str], g, console, timings: dict) -> None:
    """images/<name>.png, transforms.json (the input cameras) and splat.ply."""
    from da3_splat.data.transforms import write_transforms
    from da3_splat.files import write_png
    from da3_splat.ply import write_ply

    S, H, W = pred.depth.shape
    t0 = time.perf_counter()
    with progress_bar(console) as bar:
        task = bar.add_task("Writing outputs", total=S + 2)
        for i, name in enumerate(names):
            write_png(out / "images" / f"{name}.png", pred.processed_images[i])
            bar.advance(task)
        write_transforms(
            out / "transforms.json", [f"images/{n}.png" for n in names], pred.extrinsics, pred.intrinsics, [(H, W)] * S
        )
        timings["write_views"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_ply(out / SPLAT_FILE, g, overwrite=True)
        timings["write_ply"] = time.perf_counter() - t0
        bar.advance(task, 2)


def fit_to_inputs(renders: np.ndarray, inputs: np.ndarray, inner: np.ndarray) -> tuple[list[float], list[float]]:
    """PSNR (dB) and SSIM per view of renders against inputs (S, H, W, 3) uint8, inside the ``inner`` (H, W) box
    (the border the Gaussians are trimmed by is left out); SSIM is NaN for a box smaller than its window."""
    import numpy as np
    import torch

    from da3_splat.image_metrics import psnr, ssim

    rows, cols = inner.any(1), inner.any(0)

    def chw(x):
        return torch.from_numpy(np.ascontiguousarray(x[:, rows][:, :, cols])).permute(0, 3, 1, 2).float() / 255

    a, b = chw(renders), chw(inputs)
    try:
        ssims = ssim(a, b).tolist()
    except ValueError:  # smaller than the 11 x 11 window
        ssims = [math.nan] * len(a)
    return psnr(a, b).tolist(), ssims


def _write_preview(out: Path, pred, g, console) -> tuple[list[float], list[float]]:
    """Render the input views, write preview.png; -> PSNR and SSIM per view (:func:`fit_to_inputs`)."""
    import torch

    from da3_splat.files import write_png
    from da3_splat.reduce import border_mask
    from da3_splat.rendering.camera_path import render_path

    S, H, W = pred.depth.shape
    w2c, K = torch.from_numpy(pred.extrinsics).float(), torch.from_numpy(pred.intrinsics).float()
    with progress_bar(console) as bar:
        task = bar.add_task("Rendering the input views", total=S)
        renders = render_path(g, w2c, K, W, H, progress=lambda k: bar.update(task, completed=k))
    write_png(out / PREVIEW_FILE, preview_sheet(pred.processed_images, renders))
    return fit_to_inputs(renders, pred.processed_images, border_mask(1, H, W).reshape(H, W).numpy())


def _write_path(out: Path, g, cams, size: tuple[int, int], cfg: SplatConfig, console, timings: dict):
    """Render the camera path at --video-size into path/ and path.mp4; -> (the VideoResult, (height, width));
    a stale video goes when none is written."""
    from da3_splat.rendering.camera_path import fit_size, render_path, resize_intrinsics, write_frames, write_video

    (w2c, K), (H, W) = cams, size
    w, h = fit_size(W, H, cfg.video_size)
    K = resize_intrinsics(K, (W, H), (w, h))
    t0 = time.perf_counter()
    with progress_bar(console) as bar:
        task = bar.add_task(f"Rendering the {cfg.path} path ({w}x{h})", total=len(w2c))
        frames = render_path(g, w2c, K, w, h, progress=lambda k: bar.update(task, completed=k))
    t1 = time.perf_counter()
    write_frames(out / PATH_DIR, frames)
    t2 = time.perf_counter()
    with status(console, f"Encoding {VIDEO_FILE} ..."):
        video = write_video(out / VIDEO_FILE, frames, fps=cfg.fps)
    timings.update(path_render=t1 - t0, path_write=t2 - t1, video_encode=time.perf_counter() - t2)
    if video.skipped:
        (out / VIDEO_FILE).unlink(missing_ok=True)  # a previous run's video would not match these frames
        console.print(f"[yellow]warning:[/] no {VIDEO_FILE}: {video.skipped}", highlight=False)
    return video, (h, w)


# --------------------------------------------------------------------------------------------------
# The pipeline


def run_splat(cfg: SplatConfig, console=None, out_console=None) -> dict:
    """Run ``da3-splat splat``; returns the splat.json summary. User errors raise InputError/WeightsError.

    Cheap checks (input, output folder, poses file, file-name matching) come before the model loads."""
    from rich.console import Console

    from da3_splat.build import gaussians_from_prediction
    from da3_splat.files import write_json
    from da3_splat.inputs import run_model_on_inputs

    console = console or Console(stderr=True, soft_wrap=True)
    out_console = out_console or Console(soft_wrap=True, highlight=False)
    t_start = time.perf_counter()
    _check_config(cfg)
    model, pred, names, device, timings = run_model_on_inputs(
        cfg, _check_inputs_kept, console, needs_cameras="splat", gaussians=True
    )
    process_res = model.process_res_for(cfg.process_res)
    del model

    t0 = time.perf_counter()
    with status(console, "Building Gaussians ..."):
        g, source = gaussians_from_prediction(pred, cfg.max_gaussians, cfg.conf_percentile, device=device)
    if source == "gs-head":
        out_console.print("using the model's GS head", highlight=False)
    else:
        out_console.print(f"no GS head in {cfg.model}: head-free Gaussians (one per pixel from depth)", highlight=False)
    timings["build"] = time.perf_counter() - t0

    out, S, (H, W) = cfg.output, pred.num_views, pred.depth.shape[1:]
    out.mkdir(parents=True, exist_ok=True)
    cams = path_cameras(cfg.path, pred.extrinsics, pred.intrinsics, cfg.path_frames, g.means) if cfg.video else None
    n_path = 0 if cams is None else len(cams[0])
    _remove_stale(out, names, n_path)
    _write_scene(out, pred, names, g, console, timings)
    t0 = time.perf_counter()
    view_psnr, view_ssim = _write_preview(out, pred, g, console)
    timings["preview"] = time.perf_counter() - t0
    video = path_size = None
    if cams is not None:
        video, path_size = _write_path(out, g, cams, (H, W), cfg, console, timings)

    info = {
        "model": cfg.model,
        "input": str(cfg.input),
        "device": device,
        "process_res": process_res,
        "poses": None if cfg.poses is None else str(cfg.poses),
        "source": source,
        "num_gaussians": g.num_gaussians,
        "max_gaussians": cfg.max_gaussians,
        "num_views": S,
        "processed_size": [int(H), int(W)],
        "is_metric": bool(pred.is_metric),
        "psnr_input_views_db": [round(p, 3) if math.isfinite(p) else None for p in view_psnr],
        "ssim_input_views": [round(v, 4) if math.isfinite(v) else None for v in view_ssim],
        "path": cfg.path if cfg.video else None,
        "path_frames": n_path,
        "path_size": None if path_size is None else [int(v) for v in path_size],
        "video": None if video is None else (str(video.path.name) if video.path else None),
        "video_skipped": None if video is None else video.skipped,
        "streaming": pred.extra.get("streaming"),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "views": list(names),
    }
    write_json(out / SUMMARY_FILE, info)
    report(info, out, time.perf_counter() - t_start, out_console)
    return info


def report(info: dict, out: Path, seconds: float, console) -> None:
    H, W = info["processed_size"]
    units = "the units of the given poses" if info["poses"] else ("metres" if info["is_metric"] else "relative units")
    console.print(
        f"[green]Done:[/] {info['num_gaussians']:,} Gaussians ({info['source']}) from {info['num_views']} view(s) "
        f"at {W}x{H} in {seconds:.1f} s; {units}",
        highlight=False,
    )
    psnrs = [p for p in info["psnr_input_views_db"] if p is not None]
    ssims = [v for v in info["ssim_input_views"] if v is not None]
    if psnrs:
        ssim = f", SSIM {sum(ssims) / len(ssims):.3f}" if ssims else ""
        console.print(
            f"Fit to the inputs (the Gaussians rendered at the {len(psnrs)} input cameras vs the input photos; "
            f"not novel views): PSNR {sum(psnrs) / len(psnrs):.1f} dB{ssim} (SSIM 1 = identical)",
            highlight=False,
        )
    rows = [
        (SPLAT_FILE, "3D Gaussians, INRIA 3DGS PLY (SuperSplat, gsplat, nerfstudio)"),
        ("transforms.json", f"input cameras, nerfstudio convention (images in images/; ns-train ... --data {out})"),
        (PREVIEW_FILE, "inputs next to renders at their cameras"),
    ]
    if info["path"]:
        h, w = info["path_size"]
        more = "" if (h, w) == (H, W) else "; --video-size 0 for full size"
        rows.append((f"{PATH_DIR}/", f"{info['path_frames']} rendered frames at {w}x{h} ({info['path']} path{more})"))
        if info["video"]:
            rows.append((VIDEO_FILE, "the path as a video"))
    rows.append((SUMMARY_FILE, "summary and timings"))
    console.print(f"Outputs in [bold]{out}[/]:", highlight=False)
    for name, what in rows:
        console.print(f"  {name:<16} {what}", highlight=False)
