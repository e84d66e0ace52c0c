"""`da3-splat view --images FOLDER --model SRC`: DA3 runs inside the viewer.

The model loads before the server starts (a bad --model or folder is a one-line error, like the other
commands). In the browser, the steps show as they happen: images are read (progress in the panel), DA3 runs
on all of them in one pass, then the cameras (with their images) and the confident depth points appear, and
the Gaussians follow once they are built and reduced (``da3_splat.build.gaussians_from_prediction`` via the
viewer's selection, so the confidence / opacity / budget controls apply). "Run DA3" re-reads the folder, so
photos added to it (or another folder typed in) are picked up.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from da3_splat.errors import InputError
from da3_splat.viewer import ViewConfig
from da3_splat.viewer.scene import CameraView, ViewScene, thumbnail

MAX_LIVE_POINTS = 500_000


def scene_from_prediction(
    pred, names: list[str], title: str, conf_percentile: float, longest: int, save_dir: Path
) -> ViewScene:
    """A viewer scene for a DA3 prediction: cameras with the processed images, confident depth points, and the
    prediction itself (the Gaussians are built from it by the selection)."""
    import torch

    from da3_splat.export import confident_world_points
    from da3_splat.geometry import as_homogeneous, rigid_inverse

    if pred.extrinsics is None or pred.intrinsics is None:
        raise InputError("this model predicts no cameras, so its depth cannot be placed in 3D; use an any-view model")
    S, H, W = pred.depth.shape
    c2w = rigid_inverse(as_homogeneous(torch.from_numpy(np.asarray(pred.extrinsics, np.float64)))).numpy()
    cams = [
        CameraView(
            names[i],
            c2w[i],
            np.asarray(pred.intrinsics[i], np.float64),
            (H, W),
            thumbnail(pred.processed_images[i], longest),
        )
        for i in range(S)
    ]
    points, colors = confident_world_points(pred, conf_percentile, MAX_LIVE_POINTS)
    return ViewScene(title=title, prediction=pred, points=points, point_colors=colors, cameras=cams, save_dir=save_dir)


class LiveRunner:
    """Owns the model and the "DA3 (live)" GUI folder; runs one reconstruction at a time in a thread."""

    def __init__(self, cfg: ViewConfig, model, device: str):
        self.cfg, self.model, self.device = cfg, model, device
        self.app = None
        self._thread: threading.Thread | None = None

    @classmethod
    def prepare(cls, cfg: ViewConfig) -> LiveRunner:
        """Check the images and load the model (errors are the CLI's one-line ones)."""
        from rich.console import Console

        from da3_splat.model.preprocess import list_images
        from da3_splat.progress import status
        from da3_splat.runtime import load_model, resolve_device

        list_images(cfg.images)
        device = resolve_device(cfg.device)
        console = Console(stderr=True, soft_wrap=True)
        with status(console, f"Loading model {cfg.model} ..."):
            model = load_model(cfg.model, device, console)
        if not model.has_cameras:
            raise InputError(f"{model.config.model_name} predicts no cameras; the live viewer needs an any-view model")
        return cls(cfg, model, device)

    def attach(self, app) -> None:
        self.app = app
        gui = app.server.gui
        with gui.add_folder("DA3 (live)"):
            self.folder = gui.add_text("Images", str(self.cfg.images))
            res = self.model.process_res_for(self.cfg.process_res)
            self.process_res = gui.add_number("Process res", res, min=14, step=14)
            self.run_button = gui.add_button("Run DA3")
            self.status = gui.add_markdown(f"Model: `{self.cfg.model}` ({self.device})")
        self.run_button.on_click(lambda _: self.start())

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> bool:
        """Start a run unless one is going (returns whether it started)."""
        if self.running:
            return False
        self._thread = threading.Thread(target=self._guarded_run, daemon=True, name="da3-view-live")
        self._thread.start()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def _say(self, text: str) -> None:
        self.status.content = text
        self.app.set_status(text)

    def _guarded_run(self) -> None:
        try:
            self.run_button.disabled = True
            self.run(Path(str(self.folder.value)), int(self.process_res.value))
        except Exception as e:  # noqa: BLE001 -- reported in the panel and on stderr; the viewer keeps running
            from da3_splat.errors import describe_error

            self._say(f"**error:** {describe_error(e)}")
            self.app._report_error(e)
        finally:
            self.run_button.disabled = False

    def run(self, folder: Path, process_res: int) -> ViewScene:
        from da3_splat.inputs import unique_names
        from da3_splat.model.preprocess import list_images, load_image

        if process_res < 14:
            raise InputError(f"process res must be at least 14, got {process_res}")
        t0 = time.perf_counter()
        paths = list_images(folder)
        names = unique_names(paths)
        images = []
        for i, p in enumerate(paths):
            self._say(f"Reading images: {i}/{len(paths)}")
            images.append(load_image(p))
        name = self.model.config.model_name
        self._say(f"Running {name} on {len(images)} view(s) ({self.device}) ...")
        pred = self.model.infer(images, process_res=process_res, infer_gs=self.model.has_gs_head)
        t_infer = time.perf_counter() - t0
        scene = scene_from_prediction(
            pred,
            names,
            f"{name} on {folder} ({len(images)} views)",
            self.cfg.conf_percentile,
            self.cfg.thumbnail_size,
            self.cfg.save_dir or Path.cwd(),
        )
        self.app.hide_points_with_splats = True
        self.app.set_scene(scene, show_points=True)  # cameras and depth points now, Gaussians when built
        self.status.content = f"{len(images)} views in {t_infer:.1f} s; building Gaussians ..."
        self.app.wait_idle()
        n = "no" if self.app.selection is None else f"{self.app.selection.num_gaussians:,}"
        self.status.content = f"Done: {len(images)} views, {n} Gaussians ({time.perf_counter() - t0:.1f} s)"
        return scene
