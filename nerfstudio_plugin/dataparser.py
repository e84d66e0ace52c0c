"""``da3-images``: a folder of photos (or a video) without cameras; DA3 predicts them, so no COLMAP is needed.

The predicted cameras then go through nerfstudio's usual normalisation (orient, centre, scale), as a
``transforms.json`` would. When training starts the pipeline calls :meth:`DA3ImagesDataParser.save_cameras`,
which writes them to the run folder as ``transforms.json`` and points the saved config at that file, so
``ns-eval``, ``ns-export`` and ``ns-viewer`` reuse the same cameras instead of predicting them again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from nerfstudio.cameras import camera_utils
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.plugins.registry_dataparser import DataParserSpecification
from nerfstudio.utils.rich_utils import CONSOLE

from da3_splat.data.transforms import TRANSFORMS_FILE, write_transforms
from da3_splat.geometry import apply_sim3_to_w2c, as_homogeneous, camera_centers, opencv_w2c_to_opengl_c2w, umeyama
from da3_splat.model.preprocess import VIDEO_EXTENSIONS, list_images, load_image, read_video_frames
from nerfstudio_plugin.errors import DataError, one_line_errors
from nerfstudio_plugin.initialise import DEFAULT_WEIGHTS, load_da3

MIN_VIEWS = 2
ANCHORS = 4  # views shared by every DA3 pass when the images do not fit in one (ties the passes' frames together)


@dataclass
class DA3ImagesDataParserConfig(DataParserConfig):
    """Photos or a video without cameras: Depth Anything 3 predicts the cameras and intrinsics."""

    _target: type = field(default_factory=lambda: DA3ImagesDataParser)
    data: Path = Path()
    """A folder of images (not recursive) or a video (.mp4 .mov .avi .mkv .webm)."""
    weights: str = DEFAULT_WEIGHTS
    """DA3 weights that predict the cameras (see --pipeline.model.weights)."""
    process_res: int | None = None
    """Longest side, in pixels, of the images DA3 sees
    (default: the model's own: 504 for the official models, the training resolution for models trained here)."""
    pose_solver: Literal["decoder", "matches"] | None = None
    """Cameras from DA3's camera decoder, or from the model's own patch matches lifted with its depth (better for
    models trained here with --loss.matching); default: the setting saved with the weights."""
    max_views_per_pass: int = 64
    """Images per DA3 pass; more images run in several passes that share 4 anchor views (at least 8)."""
    chunk_size: int | None = None
    """Ordered frames (a video, a walk-through): stream them in chunks of this many neighbouring frames, each
    aligned to the previous one on the frames they share, instead of anchored passes (memory set by the chunk)."""
    loop_closure: bool = False
    """With --chunk-size: find returns to a place seen before, measure each with one more pass and correct the
    chunks with a pose graph (for trajectories that revisit their start)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where DA3 runs to predict the cameras."""
    video_stride: int = 1
    """Video: keep every N-th frame."""
    max_frames: int | None = None
    """Video: keep at most this many frames."""
    eval_mode: Literal["interval", "all"] = "interval"
    """interval: every eval-interval-th image is held out for evaluation; all: every image trains and evaluates."""
    eval_interval: int = 8
    orientation_method: Literal["pca", "up", "vertical", "none"] = "up"
    center_method: Literal["poses", "focus", "none"] = "poses"
    auto_scale_poses: bool = True
    """Scale the cameras to fit in [-1, 1], as nerfstudio-data does."""
    scale_factor: float = 1.0
    cameras: Path | None = None
    """A transforms.json written by an earlier run (set automatically in the run's config): reuse its cameras."""
    colmap: bool = False
    """Also write the predicted cameras and a point cloud from DA3's confident depth as a COLMAP sparse model in the
    run folder (colmap/sparse/0 and colmap/images, the images at the size DA3 saw them), for gsplat's
    simple_trainer.py, the original 3DGS code or nerfstudio's colmap dataparser. Needs pycolmap."""


class DA3ImagesDataParser(DataParser):
    config: DA3ImagesDataParserConfig

    def __init__(self, config: DA3ImagesDataParserConfig):
        super().__init__(config)
        self._images: list[Path] | None = None
        self._cameras: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # w2c, K, sizes (H, W)
        self._geometry: PassGeometry | None = None  # what DA3 saw and its depth, for --colmap

    # ----------------------------------------------------------------------------------------------
    # nerfstudio's entry point

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        with one_line_errors(f"the images in {self.config.data}"):
            paths = self.images()
            idx = self._split(len(paths), split)
            w2c, K, sizes = self.cameras_for(paths)
        c2w = opencv_w2c_to_opengl_c2w(torch.from_numpy(w2c).double()).float()
        c2w, transform = camera_utils.auto_orient_and_center_poses(
            c2w, method=self.config.orientation_method, center_method=self.config.center_method
        )
        scale = self.config.scale_factor
        if self.config.auto_scale_poses:
            scale /= float(torch.max(torch.abs(c2w[:, :3, 3])).clamp(min=1e-8))
        c2w[:, :3, 3] *= scale
        K_t, sizes_t = torch.from_numpy(K).float(), torch.from_numpy(sizes)
        cameras = Cameras(
            camera_to_worlds=c2w[idx, :3, :4],
            fx=K_t[idx, 0, 0:1],
            fy=K_t[idx, 1, 1:2],
            cx=K_t[idx, 0, 2:3],
            cy=K_t[idx, 1, 2:3],
            width=sizes_t[idx, 1:2],
            height=sizes_t[idx, 0:1],
            camera_type=CameraType.PERSPECTIVE,
        )
        return DataparserOutputs(
            image_filenames=[paths[i] for i in idx],
            cameras=cameras,
            scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]])),
            dataparser_scale=scale,
            dataparser_transform=transform,
        )

    def _split(self, n: int, split: str) -> list[int]:
        if self.config.eval_mode == "all":
            return list(range(n))
        if self.config.eval_interval < 2:
            raise DataError(f"--eval-interval must be at least 2, got {self.config.eval_interval}")
        is_eval = [i % self.config.eval_interval == 0 for i in range(n)]
        return [i for i in range(n) if is_eval[i] == (split != "train")]

    # ----------------------------------------------------------------------------------------------
    # Images

    def images(self) -> list[Path]:
        """The input images: the folder's, or the video's kept frames (extracted once into a cache folder)."""
        if self._images is None:
            data = Path(self.config.data)
            if not data.exists():
                raise DataError(f"data not found: {data}")
            if data.is_file() and data.suffix.lower() in VIDEO_EXTENSIONS:
                self._images = self._video_frames(data)
            elif data.is_dir():
                self._images = [p.resolve() for p in list_images(data)]
            else:
                raise DataError(f"da3-images takes a folder of images or a video, got {data}")
            if len(self._images) < MIN_VIEWS:
                raise DataError(f"{data} has {len(self._images)} image; da3-images needs at least {MIN_VIEWS}")
        return self._images

    def _video_frames(self, video: Path) -> list[Path]:
        stat = video.stat()
        key = f"{video.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.config.video_stride}|{self.config.max_frames}"
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "da3-splat" / "video-frames"
        folder = cache / hashlib.sha1(key.encode()).hexdigest()[:16]
        done = folder / "frames.json"
        if not done.is_file():
            import cv2

            frames = read_video_frames(video, self.config.max_frames, self.config.video_stride)
            folder.mkdir(parents=True, exist_ok=True)
            for i, frame in enumerate(frames):
                cv2.imwrite(str(folder / f"frame_{i + 1:05d}.png"), frame[..., ::-1])
            done.write_text(json.dumps({"video": str(video.resolve()), "frames": len(frames)}))
        n = json.loads(done.read_text())["frames"]
        return [folder / f"frame_{i + 1:05d}.png" for i in range(n)]

    # ----------------------------------------------------------------------------------------------
    # Cameras

    def cameras_for(self, paths: list[Path]):
        """(w2c (N, 4, 4) OpenCV, K (N, 3, 3) in pixels of each image, sizes (N, 2) [H, W]) for ``paths``: from
        ``--cameras`` when it is given and still there, else predicted by DA3 (once per process)."""
        if self._cameras is None:
            file = self.config.cameras
            if file is not None and Path(file).is_file():
                self._cameras = read_cameras(Path(file), paths)
            else:
                if file is not None:
                    CONSOLE.print(f"[yellow]warning:[/] {file} is gone; predicting the cameras again")
                self._cameras = self._predict(paths)
        return self._cameras

    def _predict(self, paths: list[Path]):
        from da3_splat.runtime import resolve_device, set_pose_solver

        if self.config.loop_closure and self.config.chunk_size is None:
            raise DataError("--loop-closure needs --chunk-size (it corrects the chunks of a streamed run)")
        if self.config.chunk_size is not None:  # before the model loads, named as the flags are
            from da3_splat.streaming import check_chunking

            check_chunking(self.config.chunk_size, None, False, names=("--chunk-size", "--chunk-overlap"))
        if self.config.max_views_per_pass < 2 * ANCHORS:
            got = self.config.max_views_per_pass
            raise DataError(f"--max-views-per-pass must be at least {2 * ANCHORS}, got {got}")
        images = [load_image(p) for p in paths]  # InputError names an unreadable file
        device = resolve_device(self.config.device)
        model = load_da3(self.config.weights, device)
        set_pose_solver(model, self.config.pose_solver)
        if not model.has_cameras:
            raise DataError(f"{self.config.weights} predicts no cameras; da3-images needs an any-view model")
        if self.config.colmap:
            from da3_splat.colmap_export import require_pycolmap

            require_pycolmap()  # one line, before the model runs
        CONSOLE.log(f"DA3 predicts the cameras of {len(images)} images")
        geometry = PassGeometry() if self.config.colmap else None
        if self.config.chunk_size is None:
            w2c, K = predict_cameras(model, images, self.config.process_res, self.config.max_views_per_pass, geometry)
        else:
            w2c, K = stream_cameras(
                model, images, self.config.process_res, self.config.chunk_size, self.config.loop_closure, geometry
            )
        self._geometry = geometry
        sizes = np.array([im.shape[:2] for im in images], dtype=np.int64)
        return w2c, K, sizes

    def save_cameras(self, run_dir: Path) -> Path | None:
        """Write the cameras to ``run_dir/transforms.json`` (image paths relative to it, nerfstudio-readable)
        and point this parser's config at the file; -> the file."""
        if self._cameras is None or self._images is None:
            return None
        run_dir = Path(run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        w2c, K, sizes = self._cameras
        rel = [os.path.relpath(p, run_dir) for p in self._images]
        file = write_transforms(run_dir / TRANSFORMS_FILE, rel, w2c, K, sizes)
        self.config.cameras = file
        CONSOLE.log(f"Cameras predicted by DA3 written to {file}")
        if self.config.colmap:
            self._write_colmap(run_dir)
        return file

    def _write_colmap(self, run_dir: Path) -> None:
        if self._geometry is None or self._images is None:
            CONSOLE.print("[yellow]warning:[/] no COLMAP model: the cameras were read from a file, not predicted")
            return
        from PIL import Image

        from da3_splat.colmap_export import write_colmap_model

        g, w2c = self._geometry, self._cameras[0]
        if len({d.shape for d in g.depth}) > 1:
            CONSOLE.print("[yellow]warning:[/] no COLMAP model: DA3 saw the images at different sizes")
            return
        out = run_dir / "colmap"
        (out / "images").mkdir(parents=True, exist_ok=True)
        names = [f"{p.stem}.png" for p in self._images]
        if len(set(names)) != len(names):  # photo.jpg and photo.png
            names = [f"{i:05d}_{p.stem}.png" for i, p in enumerate(self._images)]
        for name, image in zip(names, g.images):
            Image.fromarray(image).save(out / "images" / name)
        stacks = (np.stack(v) for v in (g.images, g.depth, g.conf))
        info = write_colmap_model(out, names, *stacks, w2c, np.stack(g.K).astype(np.float64))
        CONSOLE.log(f"COLMAP model ({info['num_points']} points) written to {out / info['path']}")


@dataclass
class PassGeometry:
    """Per image, what DA3 saw (uint8, processed size), its depth and confidence in the merged frame and its
    intrinsics in processed pixels (filled by :func:`predict_cameras`)."""

    images: list = field(default_factory=list)
    depth: list = field(default_factory=list)
    conf: list = field(default_factory=list)
    K: list = field(default_factory=list)


def predict_cameras(
    model, images: list[np.ndarray], process_res: int | None, max_views: int, geometry: PassGeometry | None = None
):
    """DA3's cameras for every image, in one frame: w2c (N, 4, 4), K (N, 3, 3) in pixels of each image.
    ``geometry``: also fill it (depth scaled into the merged frame with each pass's similarity).

    More images than ``max_views`` run in passes that all include the same ``ANCHORS`` views (spread over the
    sequence); each later pass is mapped into the first one's frame by the similarity that best aligns its anchor
    cameras (their centres and a point one camera-spacing in front of each, so rotation is fixed too)."""
    n = len(images)
    anchors: list[int] = []
    groups = [list(range(n))]
    if n > max_views:
        anchors = sorted(set(np.linspace(0, n - 1, ANCHORS).round().astype(int).tolist()))
        rest = [i for i in range(n) if i not in anchors]
        groups = [g.tolist() for g in np.array_split(rest, math.ceil(len(rest) / (max_views - len(anchors))))]
    w2c, K = _empty_outputs(n, geometry)
    ref = None
    for group in groups:
        ids = anchors + group
        pred = model.infer([images[i] for i in ids], process_res=process_res)
        e = as_homogeneous(torch.from_numpy(pred.extrinsics).double())
        scale = 1.0
        if anchors:
            if ref is None:
                ref = e[: len(anchors)]
            else:
                R, t, s = umeyama(_anchor_points(e[: len(anchors)]), _anchor_points(ref))
                e = apply_sim3_to_w2c(e, R, t, s)
                scale = float(s)  # distances, depth included, scale with the frame
        keep = [(j, i) for j, i in enumerate(ids) if not (i in anchors and group is not groups[0])]
        _store(pred, e, scale, keep, images, w2c, K, geometry)  # anchors keep the first pass's cameras
    return w2c, K


def stream_cameras(
    model,
    images: list[np.ndarray],
    process_res: int | None,
    chunk_size: int,
    loop_closure: bool,
    geometry: PassGeometry | None = None,
):
    """Like :func:`predict_cameras`, for ordered frames: chunks of ``chunk_size`` neighbouring frames, each mapped
    into the first one's frame on the frames it shares with the previous chunk (``da3_splat.streaming``), and with
    ``loop_closure`` corrected where the trajectory returns to a place seen before."""
    from da3_splat.streaming import describe_chunk, infer_streaming

    def progress(info: dict) -> None:
        CONSOLE.log(describe_chunk(info))

    pred = infer_streaming(
        model, images, chunk_size, process_res=process_res, loop_closure=loop_closure, progress=progress
    )
    n = len(images)
    w2c, K = _empty_outputs(n, geometry)
    e = as_homogeneous(torch.from_numpy(pred.extrinsics).double())
    _store(pred, e, 1.0, [(i, i) for i in range(n)], images, w2c, K, geometry)  # merged: already one frame
    return w2c, K


def _empty_outputs(n: int, geometry: PassGeometry | None) -> tuple[np.ndarray, np.ndarray]:
    """w2c (n, 4, 4) and K (n, 3, 3) to fill, and ``geometry``'s lists sized for n images."""
    if geometry is not None:
        geometry.images, geometry.depth, geometry.conf, geometry.K = ([None] * n for _ in range(4))
    return np.zeros((n, 4, 4), np.float32), np.zeros((n, 3, 3), np.float32)


def _store(pred, e: torch.Tensor, scale: float, keep, images, w2c, K, geometry: PassGeometry | None) -> None:
    """Write view ``j`` of ``pred`` (cameras ``e`` in the merged frame, ``scale`` its distances' factor) as image
    ``i`` for each (j, i) of ``keep``: w2c, K in that image's pixels and, given ``geometry``, what DA3 saw."""
    H, W = pred.depth.shape[1:]
    for j, i in keep:
        h, w = images[i].shape[:2]
        k = pred.intrinsics[j].astype(np.float64).copy()
        k[0] *= w / W  # processed pixels -> this image's pixels (the resize may change the aspect slightly)
        k[1] *= h / H
        w2c[i], K[i] = e[j].numpy(), k
        if geometry is not None:
            geometry.images[i], geometry.K[i] = pred.processed_images[j], pred.intrinsics[j]
            geometry.depth[i], geometry.conf[i] = pred.depth[j] * scale, pred.depth_conf[j]


def _anchor_points(w2c: torch.Tensor) -> torch.Tensor:
    centres = camera_centers(w2c)
    spacing = torch.cdist(centres, centres).max().clamp(min=1e-6)
    forward = w2c[:, 2, :3]  # camera +z in world coordinates
    return torch.cat([centres, centres + spacing * forward])


def read_cameras(file: Path, paths: list[Path]):
    """Cameras of ``paths`` from a transforms.json that :meth:`DA3ImagesDataParser.save_cameras` wrote (frames
    matched by resolved image path)."""
    from da3_splat.geometry import opengl_c2w_to_opencv_w2c

    try:
        frames = json.loads(file.read_text())["frames"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"cannot read the cameras in {file}: {e}") from None
    by_path = {(file.parent / f["file_path"]).resolve(): f for f in frames}
    missing = [p.name for p in paths if p.resolve() not in by_path]
    if missing:
        raise DataError(f"{file} has no camera for {len(missing)} image(s), e.g. {missing[0]}; the images changed?")
    chosen = [by_path[p.resolve()] for p in paths]
    c2w = torch.tensor([f["transform_matrix"] for f in chosen], dtype=torch.float64)
    w2c = opengl_c2w_to_opencv_w2c(c2w).float().numpy()
    K = np.array([[[f["fl_x"], 0, f["cx"]], [0, f["fl_y"], f["cy"]], [0, 0, 1]] for f in chosen], np.float32)
    sizes = np.array([[f["h"], f["w"]] for f in chosen], np.int64)
    return w2c, K, sizes


# The entry point's object. It lives here, not in config.py, because nerfstudio loads dataparser plugins while its
# datamanager module is half imported: this module may import nothing that imports a datamanager.
da3_images_dataparser = DataParserSpecification(
    config=DA3ImagesDataParserConfig(),
    description="Photos or a video without cameras: Depth Anything 3 predicts them (da3-splat)",
)
