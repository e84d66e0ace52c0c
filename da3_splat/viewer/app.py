"""The viser side of `da3-splat view`: scene nodes (Gaussians, points, camera frustums) and the GUI. What it
draws is in the display frame of :mod:`da3_splat.viewer.display`."""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np

from da3_splat.errors import InputError
from da3_splat.gaussians import Gaussians
from da3_splat.viewer import LOOPBACK, ViewConfig, check_config
from da3_splat.viewer.display import DISPLAY_RADIUS, DisplayFrame, LatestOnly, add_gaussian_splats, import_viser, wxyz
from da3_splat.viewer.loading import load_scene
from da3_splat.viewer.scene import CameraView, ViewScene
from da3_splat.viewer.selection import (
    DEFAULT_SAVE_NAME,
    SelectionParams,
    Selector,
    display_covariances,
    save_selection,
    splat_colors,
)

# Smallest standard deviation sent to the browser (display units): float16 keeps ~3 digits above 6e-5.
MIN_DISPLAY_SIGMA = 2e-4
MAX_DISPLAY_POINTS = 1_000_000  # more makes the browser crawl; a fixed-seed subset is drawn instead
CAMERA_COLOR = (230, 80, 30)


class ViewerApp:
    """A viser server showing one :class:`ViewScene` at a time (``set_scene`` replaces it)."""

    def __init__(self, cfg: ViewConfig, scene: ViewScene | None = None):
        viser = import_viser()
        self.cfg = cfg
        self.server = viser.ViserServer(host=cfg.host, port=cfg.port, verbose=False)
        self.scene: ViewScene | None = None
        self.selector: Selector | None = None
        self.selection: Gaussians | None = None  # what is drawn (and saved), in scene coordinates
        self.frame = DisplayFrame(np.zeros(3), 1.0)
        self.hide_points_with_splats = False  # live mode: the depth points give way once the Gaussians are in
        self._lock = threading.RLock()
        self._frustums: list = []
        self._root = self._splats_handle = self._points_handle = self._cameras_handle = None
        self._worker = LatestOnly(self._apply_selection, self._report_error)
        self._build_gui()
        self.server.on_client_connect(self._on_connect)
        if scene is not None:
            self.set_scene(scene)

    @property
    def url(self) -> str:
        return f"http://{self.server.get_host()}:{self.server.get_port()}"

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop serving and wait for a running selection; returns whether no background work is left."""
        self.server.stop()
        return self._worker.idle.wait(timeout)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until the selection is computed and drawn (tests, scripts)."""
        return self._worker.idle.wait(timeout)

    # ----------------------------------------------------------------------------------------------
    # GUI

    def _build_gui(self) -> None:
        gui, cfg = self.server.gui, self.cfg
        self.info = gui.add_markdown("Loading ...")
        with gui.add_folder("Gaussians"):
            self.show_splats = gui.add_checkbox("Show Gaussians", True)
            self.min_opacity = gui.add_slider("Min opacity", 0.0, 1.0, 0.01, cfg.min_opacity)
            self.conf = gui.add_slider(
                "Min confidence %",
                0.0,
                99.0,
                1.0,
                cfg.conf_percentile,
                disabled=True,
                hint="Percentile of DA3's depth confidence (scenes built from depth)",
            )
            self.budget = gui.add_number("Max Gaussians", cfg.max_gaussians, min=1, step=1000)
            self.apply_budget = gui.add_button(
                "Re-run with this many Gaussians", hint="Merges neighbouring Gaussians (da3_splat.reduce) to fit"
            )
            self.splat_size = gui.add_slider(
                "Splat size (display)",
                0.25,
                4.0,
                0.25,
                1.0,
                hint="Enlarges Gaussians on screen only; saved PLYs keep their size",
            )
        with gui.add_folder("Point cloud"):
            self.show_points = gui.add_checkbox("Show points", False)
            self.point_size = gui.add_slider("Point size", 0.002, 0.2, 0.002, 0.02)
        with gui.add_folder("Cameras"):
            self.show_cameras = gui.add_checkbox("Show cameras", True)
            self.camera_choice = gui.add_dropdown("Camera", ("(none)",))
            self.goto_camera = gui.add_button("Go to camera")
        with gui.add_folder("Save"):
            self.save_name = gui.add_text("File name", DEFAULT_SAVE_NAME)
            self.save_button = gui.add_button("Save selection as PLY")
            self.save_status = gui.add_markdown(" ")
        self.show_splats.on_update(lambda _: self._set_visible("splats", self.show_splats.value))
        self.show_points.on_update(lambda _: self._set_visible("points", self.show_points.value))
        self.show_cameras.on_update(lambda _: self._set_visible("cameras", self.show_cameras.value))
        self.min_opacity.on_update(lambda _: self.request_selection())
        self.conf.on_update(lambda _: self.request_selection())
        self.apply_budget.on_click(lambda _: self.request_selection())
        self.splat_size.on_update(lambda _: self._redraw_splats())
        self.point_size.on_update(lambda _: self._draw_points())
        self.goto_camera.on_click(lambda e: self._goto_selected(e.client))
        self.save_button.on_click(lambda _: self.save())

    def params(self) -> SelectionParams:
        return SelectionParams(
            max_gaussians=max(1, int(self.budget.value)),
            min_opacity=float(self.min_opacity.value),
            conf_percentile=float(self.conf.value),
        )

    def set_status(self, text: str) -> None:
        self.info.content = text

    def _report_error(self, exc: BaseException) -> None:
        from da3_splat.errors import describe_error

        message = describe_error(exc)
        self.save_status.content = f"**error:** {message}"
        print(f"error: {message}", file=sys.stderr, flush=True)

    # ----------------------------------------------------------------------------------------------
    # Scene

    def set_scene(self, scene: ViewScene, show_points: bool | None = None) -> None:
        """Replace what is shown: cameras and points at once, the Gaussians when the selection is computed."""
        with self._lock:
            self.scene, self.selector, self.selection = scene, Selector(scene), None
            self.frame = DisplayFrame.fit(scene)
            self.server.scene.set_up_direction(tuple(scene.up_direction()))
            self.conf.disabled = not scene.has_confidence
            self.show_points.value = (not self.selector.available) if show_points is None else show_points
            names = [f"{i}: {c.name}" for i, c in enumerate(scene.cameras)] or ["(none)"]
            self.camera_choice.options = names
            self.camera_choice.value = names[0]
            if self._root is not None:
                self._root.remove()  # and every node below it (viser removes children with their parent)
            self._root = self.server.scene.add_frame("/scene", show_axes=False)
            self._splats_handle = self._points_handle = None
            self._draw_cameras()
            self._draw_points()
            self._update_info()
        if self.selector.available:
            self.request_selection()
        for client in self.server.get_clients().values():
            self._initial_view(client)

    def request_selection(self) -> None:
        if self.selector is not None and self.selector.available:
            self._worker.submit(self.params())

    def _apply_selection(self, params: SelectionParams) -> None:
        selector = self.selector
        g = selector.select(params)
        with self._lock:
            if selector is not self.selector:  # the scene changed meanwhile
                return
            self.selection = g
            self._redraw_splats()
            if self.scene.points is None:
                self._draw_points()  # the points are the selection's centres
            if self.hide_points_with_splats and g.num_gaussians:
                self.set_visible("points", False)
            self._update_info()

    def _update_info(self) -> None:
        s = self.scene
        parts = [f"**{s.title}**"]
        if self.selector.available:
            shown = "computing ..." if self.selection is None else f"{self.selection.num_gaussians:,}"
            total = f" of {s.gaussians.num_gaussians:,}" if s.gaussians is not None else ""
            parts.append(f"Gaussians: {shown}{total}")
        if s.points is not None:
            parts.append(f"Points: {len(s.points):,}")
        parts.append(f"Cameras: {len(s.cameras)}")
        self.set_status("  \n".join(parts))

    def set_visible(self, what: str, visible: bool) -> None:
        """Show or hide "splats", "points" or "cameras" (the GUI checkbox follows)."""
        getattr(self, f"show_{what}").value = visible
        self._set_visible(what, visible)

    def _set_visible(self, what: str, visible: bool) -> None:
        handle = getattr(self, f"_{what}_handle", None)
        if handle is not None:
            handle.visible = visible

    def _redraw_splats(self) -> None:
        with self._lock:
            g = self.selection
            if g is None:
                return
            if g.num_gaussians == 0:
                self.server.scene.add_frame("/scene/gaussians", show_axes=False)  # replaces the old splats
                return
            f = self.frame
            self._splats_handle = add_gaussian_splats(
                self.server.scene,
                "/scene/gaussians",
                centers=f.points(g.means.numpy()),
                covariances=display_covariances(g, f.scale * float(self.splat_size.value), MIN_DISPLAY_SIGMA),
                rgbs=np.ascontiguousarray(splat_colors(g)),
                opacities=np.ascontiguousarray(g.opacities.numpy()[:, None], dtype=np.float32),
                visible=bool(self.show_splats.value),
            )

    def _draw_points(self) -> None:
        with self._lock:
            s = self.scene
            if s is None:
                return
            if s.points is not None:
                pts, cols = s.points, s.point_colors
            elif self.selection is not None:
                pts, cols = self.selection.means.numpy(), (splat_colors(self.selection) * 255).round().astype(np.uint8)
            else:
                return
            if len(pts) > MAX_DISPLAY_POINTS:
                idx = np.sort(np.random.default_rng(0).choice(len(pts), MAX_DISPLAY_POINTS, replace=False))
                pts, cols = pts[idx], cols[idx]
            self._points_handle = self.server.scene.add_point_cloud(
                "/scene/points",
                points=self.frame.points(pts),
                colors=np.ascontiguousarray(cols, dtype=np.uint8),
                point_size=float(self.point_size.value),
                point_shape="circle",
                visible=bool(self.show_points.value),
            )

    def _frustum_scale(self) -> float:
        cams = self.scene.cameras
        if len(cams) < 2:
            return 0.1 * DISPLAY_RADIUS
        c = self.frame.points([cam.c2w[:3, 3] for cam in cams]).astype(np.float64)
        d = np.linalg.norm(c[:, None] - c[None], axis=-1) + np.eye(len(c)) * 1e9
        # A quarter of the typical spacing: neighbouring frustums do not overlap, and the next camera of a video
        # path does not hide the scene when the view sits at an input camera. Bounded for lone or packed rigs.
        return float(np.clip(0.25 * np.median(d.min(1)), 0.005 * DISPLAY_RADIUS, 0.1 * DISPLAY_RADIUS))

    def _draw_cameras(self) -> None:
        scene_api, cams = self.server.scene, self.scene.cameras
        self._cameras_handle = scene_api.add_frame(
            "/scene/cameras", show_axes=False, visible=bool(self.show_cameras.value)
        )
        self._frustums = []
        scale = self._frustum_scale()
        for i, cam in enumerate(cams):
            handle = scene_api.add_camera_frustum(
                f"/scene/cameras/{i:04d}",
                fov=cam.fov_y,
                aspect=cam.aspect,
                scale=scale,
                color=CAMERA_COLOR,
                image=cam.image,
                format="jpeg",
                wxyz=wxyz(cam.c2w[:3, :3]),
                position=self.frame.points(cam.c2w[:3, 3]),
            )
            handle.on_click(lambda e, cam=cam: self.jump_to(e.client, cam))
            self._frustums.append(handle)

    # ----------------------------------------------------------------------------------------------
    # Views

    def _on_connect(self, client) -> None:
        if self.scene is not None:
            self._initial_view(client)

    def _initial_view(self, client) -> None:
        if self.scene.cameras:
            self.jump_to(client, self.scene.cameras[0])
            return
        up = self.scene.up_direction()
        # Look at the centre from the side: the world axis least aligned with up, made orthogonal to it.
        side = np.eye(3)[np.argmin(np.abs(up))]
        side = side - up * (side @ up)
        side /= np.linalg.norm(side)
        with client.atomic():
            client.camera.position = tuple(-2.5 * DISPLAY_RADIUS * side)
            client.camera.look_at = (0.0, 0.0, 0.0)
            client.camera.up_direction = tuple(up)

    def jump_to(self, client, cam: CameraView) -> None:
        """Put the client's view at an input camera (OpenCV axes: z forward, y down)."""
        if client is None:
            return
        pos = self.frame.points(cam.c2w[:3, 3]).astype(np.float64)
        forward = cam.c2w[:3, 2] / np.linalg.norm(cam.c2w[:3, 2])
        # Orbit around the point in front of the camera at the scene centre's depth (the display origin).
        depth = max(float(-pos @ forward), 0.1 * DISPLAY_RADIUS)
        # From its own apex a frustum (and its opaque image) fills the whole view: hide the one we jump to.
        for i, handle in enumerate(self._frustums):
            handle.visible = self.scene.cameras[i] is not cam
        with client.atomic():
            client.camera.fov = cam.fov_y
            client.camera.position = tuple(pos)
            client.camera.look_at = tuple(pos + depth * forward)
            client.camera.up_direction = tuple(-cam.c2w[:3, 1])

    def _goto_selected(self, client) -> None:
        if self.scene is None or not self.scene.cameras:
            return
        index = int(str(self.camera_choice.value).split(":", 1)[0])
        self.jump_to(client, self.scene.cameras[index])

    # ----------------------------------------------------------------------------------------------
    # Saving

    def save(self) -> None:
        """Save the current selection next to the scene; a taken name gets a suffix (never overwrites)."""
        try:
            if self.selection is None:
                raise InputError("nothing to save yet: no Gaussians are shown")
            folder = self.cfg.save_dir or self.scene.save_dir
            path = save_selection(self.selection, folder, str(self.save_name.value))
        except Exception as e:  # noqa: BLE001 -- shown in the GUI; the viewer keeps running
            self._report_error(e)
            return
        self.save_status.content = f"Saved {self.selection.num_gaussians:,} Gaussians to `{path}`"
        print(f"saved {path}", flush=True)


def serve(cfg: ViewConfig) -> None:
    """Load, start the server, run until Ctrl-C. User errors (bad PATH, no viser) are raised before serving."""
    check_config(cfg)
    import_viser()
    live = None
    if cfg.images is not None:
        from da3_splat.viewer.live import LiveRunner

        live = LiveRunner.prepare(cfg)  # checks the images and loads the model before the server starts
        scene = None
    else:
        scene = load_scene(cfg.path, cfg.thumbnail_size)
    app = None
    try:
        # The page is served from inside ViewerApp(), so Ctrl-C from then on (even while the GUI or the scene
        # is still being built) is a clean stop.
        app = ViewerApp(cfg)
        if scene is not None:
            app.set_scene(scene)
        if live is not None:
            live.attach(app)
            live.start()
        print(f"da3-splat view: open {app.url} in a browser (Ctrl-C to stop)", flush=True)
        if cfg.host != LOOPBACK:
            print(
                f"note: listening on {cfg.host}: anyone who can reach it can view the scene and save PLYs to "
                f"{cfg.save_dir or (scene.save_dir if scene else 'the current folder')}",
                flush=True,
            )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        idle = app is None or (app.stop() and (live is None or live.wait(0.0)))
        if not idle:
            # A daemon thread still inside a torch op would abort interpreter shutdown ("terminate called
            # without an active exception"); nothing is left to save, so leave at once.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
