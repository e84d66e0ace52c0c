"""`da3-splat view` served: the viser server (HTTP, GUI actions, Ctrl-C, live DA3) and a headless-Chromium
screenshot of the splats. The scenes and fixtures are test_viewer's."""

from __future__ import annotations

import importlib.util
import re
import shutil
import socket
import subprocess
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from da3_splat.errors import InputError
from da3_splat.files import write_png
from da3_splat.ply import read_ply
from da3_splat.viewer import ViewConfig
from da3_splat.viewer.loading import load_scene
from tests.test_viewer import NAMES, _assert_same_gaussians, gaussians, ns_run, pred, root, splat_dir  # noqa: F401,F811 -- module fixtures

# --------------------------------------------------------------------------------------------------
# The viser server (no browser)

needs_viser = pytest.mark.skipif(
    importlib.util.find_spec("viser") is None, reason="viser is not installed (pip install -e '.[viewer]')"
)
WAIT_S = 120  # generous bound for a loaded 2-core machine; the work itself takes a second or two


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cfg: ViewConfig, scene=None):
    from da3_splat.viewer.app import ViewerApp

    return ViewerApp(cfg, scene)


@needs_viser
def test_server_answers_and_gui_actions(splat_dir, gaussians, tmp_path):
    cfg = ViewConfig(path=splat_dir, port=_free_port(), save_dir=tmp_path, max_gaussians=10**6)
    app = _start(cfg, load_scene(splat_dir))
    try:
        assert app.url.startswith("http://127.0.0.1:")
        html = urllib.request.urlopen(app.url, timeout=30).read().decode()
        # The client is viser's bundled build, served by this server: every script and stylesheet the page
        # needs has a local path (the only absolute URL is viser's optional analytics tag).
        local = re.findall(r'(?:src|href)="(/[^"]+\.(?:js|css))"', html)
        assert any(p.endswith(".js") for p in local), html
        for p in local:
            assert urllib.request.urlopen(app.url + p, timeout=30).status == 200
        assert [u for u in re.findall(r'(?:src|href)="(https?://[^"]+)"', html) if "googletagmanager" not in u] == []

        assert app.wait_idle(WAIT_S) and app.selection.num_gaussians == gaussians.num_gaussians
        assert app.camera_choice.options == tuple(f"{i}: {n}" for i, n in enumerate(NAMES))
        app.min_opacity.value = 0.5
        app.request_selection()
        assert app.wait_idle(WAIT_S)
        assert 0 < app.selection.num_gaussians < gaussians.num_gaussians and (app.selection.opacities >= 0.5).all()
        app.budget.value = 1000
        app.request_selection()
        assert app.wait_idle(WAIT_S) and 0 < app.selection.num_gaussians <= 1000

        app.save()
        app.save()  # the same name again: a new file, the first one kept
        assert sorted(p.name for p in tmp_path.glob("*.ply")) == ["selection.ply", "selection_1.ply"]
        _assert_same_gaussians(read_ply(tmp_path / "selection_1.ply"), app.selection)
        assert "selection_1.ply" in app.save_status.content
    finally:
        app.stop()


@needs_viser
def test_cli_serves_until_ctrl_c(ns_run):
    """`da3-splat view RUN` as a user runs it: says it is ready, answers HTTP on loopback, and Ctrl-C ends it
    cleanly (exit 0)."""
    import signal
    import sys
    import time

    port = _free_port()
    # Background processes may inherit an ignored SIGINT; the viewer gets the default, as in a terminal.
    proc = subprocess.Popen(
        [sys.executable, "-m", "da3_splat.cli", "view", str(ns_run), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    ready = f"open http://127.0.0.1:{port} in a browser"
    try:
        # The viewer says when it is ready (scene drawn); Ctrl-C is sent after that, as a user would.
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
        reader.start()
        deadline = time.monotonic() + WAIT_S
        while not any(ready in line for line in lines) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert any(ready in line for line in lines), proc.stderr.read() if proc.poll() is not None else "not ready"
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).status == 200
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        err = proc.stderr.read()
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "error" not in err


@needs_viser
def test_live_mode_runs_da3(pred, tmp_path):
    from dataclasses import replace

    from da3_splat.viewer.live import LiveRunner

    images = tmp_path / "photos"
    for name, image in zip(NAMES[:2], pred.processed_images):
        write_png(images / f"{name}.png", image)
    cfg = ViewConfig(
        images=images, model="random:da3-small", process_res=56, device="cpu", port=_free_port(), save_dir=tmp_path
    )
    with pytest.raises(InputError, match="unknown config"):
        LiveRunner.prepare(replace(cfg, model="random:nope"))
    runner = LiveRunner.prepare(cfg)
    app = _start(cfg)
    runner.attach(app)
    try:
        assert runner.start() and runner.wait(WAIT_S)
        assert runner.status.content.startswith("Done: 2 views"), runner.status.content
        scene = app.scene
        assert [c.name for c in scene.cameras] == NAMES[:2] and scene.has_confidence and len(scene.points) > 0
        assert scene.prediction.depth.shape[0] == 2 and max(scene.prediction.depth.shape[1:]) == 56
        assert app.selection is not None and app.selection.num_gaussians > 0
        assert not app.show_points.value  # the depth points gave way to the Gaussians
    finally:
        app.stop()


# --------------------------------------------------------------------------------------------------
# Headless Chromium: the page draws the splats

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
SHOT_W, SHOT_H = 640, 400


def _screenshot(url: str, out: Path) -> np.ndarray:
    """Load ``url`` in headless Chromium and save what it shows after a virtual-time budget (the page runs its
    timers and animation frames until then: long enough to connect, receive the scene and draw the splats)."""
    import cv2

    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        # WebGL on the CPU (SwiftShader): Chromium deprecates the automatic software fallback; opt in explicitly.
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--no-first-run",
        "--mute-audio",
        "--hide-scrollbars",
        # Offline by construction: any host but the local server fails, so the page must draw from viser alone.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={out.parent / (out.stem + '_profile')}",
        f"--window-size={SHOT_W},{SHOT_H}",
        "--virtual-time-budget=3000",
        f"--screenshot={out}",
        url,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.is_file(), f"no screenshot (exit {res.returncode}): {res.stderr[-2000:]}"
    return cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)


@needs_viser
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_browser_draws_the_splats(splat_dir, tmp_path):
    cfg = ViewConfig(path=splat_dir, port=_free_port(), max_gaussians=10**6)
    app = _start(cfg, load_scene(splat_dir))
    try:
        assert app.wait_idle(WAIT_S)
        with_splats = _screenshot(app.url, tmp_path / "splats.png")
        app.set_visible("splats", False)
        without = _screenshot(app.url, tmp_path / "no_splats.png")
    finally:
        app.stop()
    print(f"screenshots: {tmp_path / 'splats.png'} {tmp_path / 'no_splats.png'}")
    assert with_splats.shape == (SHOT_H, SHOT_W, 3)
    # The 3D view left of the GUI panel, above the axes gizmo in the corner. The view opens at input camera
    # 0 inside the synthetic room, so the splats fill it; without them it is mostly the white background.
    view = (slice(0, SHOT_H - 70), slice(0, int(0.45 * SHOT_W)))
    a, b = with_splats[view].astype(np.float64), without[view].astype(np.float64)
    diff = np.abs(a - b).mean()
    print(f"3D view: pixel std {a.std():.1f} with splats; mean difference from the page without them {diff:.1f}")
    assert a.std() > 25.0, f"blank view (std {a.std():.1f})"
    assert (b > 230).all(-1).mean() > 0.5, "the page without splats should show mostly background"
    assert diff > 30.0, f"splats do not change the view (mean difference {diff:.1f})"
