"""The inputs of predict, splat and the live viewer: images, a folder or a video, their file names, their known
cameras (a nerfstudio transforms.json) and the model, checked in the order that fails fastest.

``cfg`` below is any command config with ``input``, ``output``, ``overwrite``, ``poses``, ``model``, ``device``,
``video_stride`` and ``max_frames`` (and optionally ``chunk_size``, ``chunk_overlap``: streaming inference).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from da3_splat.errors import DEBUG_ENV, InputError
from da3_splat.files import check_output_dir
from da3_splat.progress import progress_bar, status
from da3_splat.runtime import DEFAULT_MODEL, load_model, resolve_device, set_pose_solver


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
    sizes = {im.shape[:2] for im in images}
    if len(sizes) > 1:  # DA3 sees every view at one size: say that the others get cropped
        console.print(
            f"[yellow]warning:[/] the images come in {len(sizes)} different sizes; each is resized and centre-cropped "
            "to the smallest processed height and width (crop them yourself to choose what is kept)",
            highlight=False,
        )
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
    with status(console, f"Loading model {cfg.model} ..."):
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


def decode_inputs(cfg, paths: list[Path] | None, console) -> list:
    """RGB uint8 arrays of the images ``paths``, or of the video's kept frames when ``paths`` is None."""
    from da3_splat.model.preprocess import load_image

    if paths is None:
        from da3_splat.frame_selection import read_frames_at, select_frames, video_signatures

        if os.environ.get(DEBUG_ENV, "") in ("", "0"):
            os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own messages; we report one line
        # Two passes: a thumbnail of every frame to choose from (black and duplicate frames out, --video-stride
        # auto spaces frames by motion), then only the chosen frames in full, so a long video never sits in memory.
        with status(console, f"Reading {cfg.input.name} ..."):
            selection = select_frames(video_signatures(cfg.input), cfg.video_stride, cfg.max_frames)
        console.print(f"{cfg.input.name}: {selection.summary()}", highlight=False)
        with status(console, f"Decoding {len(selection.kept)} frame(s) of {cfg.input.name} ..."):
            return read_frames_at(cfg.input, selection.kept)
    with progress_bar(console) as bar, ThreadPoolExecutor(max_workers=min(8, len(paths))) as pool:
        task = bar.add_task("Loading images", total=len(paths))
        images = []
        for img in pool.map(load_image, paths):
            images.append(img)
            bar.advance(task)
    return images


def chunking(cfg) -> tuple[int, int] | None:
    """``cfg.chunk_size`` / ``cfg.chunk_overlap`` checked (one-line InputErrors, before anything loads) ->
    (chunk size, overlap), or None for one pass over all views."""
    size, overlap = getattr(cfg, "chunk_size", None), getattr(cfg, "chunk_overlap", None)
    known = getattr(cfg, "poses", None) is not None
    if getattr(cfg, "loop_closure", False):
        if size is None:
            raise InputError("--loop-closure needs --chunk-size (loops are closed between chunks)")
        if known:
            raise InputError("--loop-closure is for pose-free runs: with --poses the chunks share the given frame")
    gate = getattr(cfg, "max_merge_residual", None)
    if gate is not None and not gate > 0:
        raise InputError(f"--max-merge-residual must be positive, got {gate}")
    if size is None:
        if overlap is not None:
            raise InputError("--chunk-overlap needs --chunk-size")
        if gate is not None:
            raise InputError("--max-merge-residual needs --chunk-size (it gates the merge of chunks)")
        return None
    from da3_splat.streaming import check_chunking

    return size, check_chunking(size, overlap, known, names=("--chunk-size", "--chunk-overlap"))


def run_model_on_inputs(cfg, check_outputs, console, needs_cameras: str | None = None, gaussians: bool = False, **kw):
    """The pipeline predict and splat share: check the inputs (:func:`prepare_inputs`), load the model, decode
    the inputs and run DA3 on them (with the GS head when ``gaussians`` and the model has one); ``kw`` go to
    ``infer``. With ``cfg.chunk_size`` and more views than that, DA3 runs in overlapping chunks merged into one
    frame (:func:`da3_splat.streaming.infer_streaming`), one console line per chunk.
    -> (model, prediction, view names, device, timings in seconds)."""
    chunks = chunking(cfg)
    paths, names, poses, device = prepare_inputs(cfg, check_outputs)
    model, (images, names, extrinsics, intrinsics), timings = load_model_and_inputs(
        cfg, paths, names, poses, device, console, needs_cameras=needs_cameras
    )
    set_pose_solver(model, getattr(cfg, "pose_solver", None))
    kw.update(extrinsics=extrinsics, intrinsics=intrinsics, process_res=cfg.process_res)
    kw["infer_gs"] = gaussians and model.has_gs_head
    t0 = time.perf_counter()
    if chunks is not None and len(images) > chunks[0]:
        from da3_splat.streaming import describe_chunk, infer_streaming

        def progress(info: dict) -> None:
            console.print(describe_chunk(info), highlight=False)

        what = f"{len(images)} views in chunks of {chunks[0]} sharing {chunks[1]}"
        with status(console, f"Running {model.config.model_name} on {what} ({device}) ..."):
            loops = getattr(cfg, "loop_closure", False)
            if getattr(cfg, "max_merge_residual", None) is not None:
                kw["max_residual"] = cfg.max_merge_residual
            pred = infer_streaming(model, images, *chunks, progress=progress, loop_closure=loops, **kw)
    else:
        with status(console, f"Running {model.config.model_name} on {len(images)} view(s) ({device}) ..."):
            pred = model.infer(images, **kw)
    timings["inference"] = time.perf_counter() - t0
    return model, pred, names, device, timings
