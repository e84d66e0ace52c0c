"""`da3-splat demo`: the whole path on one synthetic scene, offline, on CPU in a few minutes.

A synthetic DL3DV-style scene -> ``ns-train da3-splat`` with the bundled ``da3-tiny-synthetic`` (feed-forward only,
then with a short refinement) -> ``ns-eval`` on the held-out views (every 8th frame) -> ``ns-export
gaussian-splat`` -> a preview grid (held-out view | feed-forward | refined). nerfstudio is driven through its
commands (this package never imports it), so the demo also shows that the plugin registers from a clean process.
A small variant (what ``tests/test_demo.py`` runs): ``--frames 16 --width 160 --height 90 --refine-steps 10
--no-feedforward --max-gaussians 3000 --process-res 112 --no-export`` (one training run, one evaluation).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from da3_splat import BUNDLED_MODEL
from da3_splat.errors import InputError


@dataclass
class DemoConfig:
    """Synthetic scene -> nerfstudio method `da3-splat` (feed-forward, then refined) -> held-out PSNR, a PLY and a
    preview grid. Offline, CPU by default; needs the nerfstudio extra (`pip install -e ".[nerfstudio]"`)."""

    output: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="OUT")] = Path("demo_out")
    """Output folder (new or empty unless --overwrite)."""
    weights: str = BUNDLED_MODEL
    """DA3 weights for the feed-forward start (bundled name, Hugging Face id, folder, .safetensors)."""
    frames: int = 32
    """Frames of the synthetic scene (every 8th is held out)."""
    width: int = 480
    """Width of the synthetic scene's images (nerfstudio trains at this size)."""
    height: int = 270
    """Height of the synthetic scene's images."""
    refine_steps: int = 300
    """Refinement steps of the refined run (splatfacto-style, starting from the feed-forward Gaussians); 0 runs
    the feed-forward Gaussians alone."""
    feedforward: bool = True
    """Also train and score the feed-forward-only run, for comparison with the refined one."""
    max_gaussians: int = 60_000
    """Budget of the feed-forward Gaussians (DA3 gives one per pixel; reduced by confidence and voxel merging)."""
    process_res: int | None = None
    """Longest image side DA3 runs at (None: the model's own)."""
    export: bool = True
    """Export the last run's Gaussians to a PLY (ns-export gaussian-splat)."""
    seed: int = 7
    """Seed of the synthetic scene."""
    device: Literal["cpu", "cuda"] = "cpu"
    """nerfstudio's --machine.device-type (cpu or cuda)."""
    view: bool = False
    """Open the viewer on the last run (the refined one) at the end (`da3-splat view`)."""
    overwrite: bool = False
    """Replace an existing OUT."""


def _ns_command(name: str) -> Path:
    exe = Path(sys.executable).parent / name
    if not exe.exists():
        found = shutil.which(name)
        if found is None:
            raise InputError(f'{name} not found: install the nerfstudio extra (pip install -e ".[nerfstudio]")')
        exe = Path(found)
    return exe


def _run(console, label: str, args: list, log: Path) -> float:
    """Run one command with its output in ``log``; -> seconds. A failure is one line pointing at the log."""
    t0 = time.perf_counter()
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    with console.status(f"{label} ..."), open(log, "w") as f:
        res = subprocess.run([str(a) for a in args], stdout=f, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
        raise InputError(f"{label} failed (exit {res.returncode}): {tail[0] if tail else ''} -- see {log}")
    console.print(f"[green]✓[/] {label} ({seconds:.0f} s)", highlight=False)
    return seconds


def _train(cfg: DemoConfig, console, scene: Path, name: str, refine_steps: int, logs: Path) -> Path:
    """One ``ns-train da3-splat`` run; -> its config.yml."""
    out = cfg.output / "runs"
    args = [
        _ns_command("ns-train"),
        "da3-splat",
        "--data",
        scene,
        "--output-dir",
        out,
        "--experiment-name",
        name,
        "--timestamp",
        "run",
        "--machine.device-type",
        cfg.device,
        "--vis",
        "tensorboard",
        "--max-num-iterations",
        max(refine_steps, 1),
        "--pipeline.model.refine-steps",
        refine_steps,
        "--pipeline.model.weights",
        cfg.weights,
        "--pipeline.model.max-gaussians",
        cfg.max_gaussians,
        *(["--pipeline.model.process-res", cfg.process_res] if cfg.process_res else []),
        "--steps-per-eval-all-images",
        1_000_000,
        "--steps-per-eval-image",
        1_000_000,
        "nerfstudio-data",
        "--downscale-factor",
        4,
        "--eval-mode",
        "interval",
        "--eval-interval",
        8,
    ]
    label = "feed-forward (no refinement)" if refine_steps == 0 else f"refinement ({refine_steps} steps)"
    _run(console, f"ns-train da3-splat: {label}", args, logs / f"train_{name}.log")
    return out / name / "da3-splat" / "run" / "config.yml"


def _evaluate(console, config: Path, name: str, out: Path, logs: Path) -> dict:
    metrics, renders = out / f"metrics_{name}.json", out / "renders" / name
    args = [_ns_command("ns-eval"), "--load-config", config, "--output-path", metrics, "--render-output-path", renders]
    _run(console, f"ns-eval ({name})", args, logs / f"eval_{name}.log")
    return json.loads(metrics.read_text())["results"]


def _preview(out: Path, names: list[str]) -> Path | None:
    """Rows: held-out views; columns: ground truth, then each run's render (from ns-eval's renders)."""
    import numpy as np
    from PIL import Image

    from da3_splat.files import write_png

    first = sorted((out / "renders" / names[0]).glob("*_img_*.png"))
    rows = []
    for path in first:
        paths = [out / "renders" / name / path.name for name in names]
        if not all(p.exists() for p in paths):
            continue
        images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
        w = images[0].shape[1] // 2  # splatfacto's "img" is ground truth | render
        rows.append(np.concatenate([images[0][:, :w], *(im[:, w:] for im in images)], axis=1))
    if not rows:
        return None
    write_png(out / "preview.png", np.concatenate(rows, axis=0))
    return out / "preview.png"


def run_demo(cfg: DemoConfig, console=None) -> dict:
    from rich.console import Console

    from da3_splat.data.synthetic import SyntheticConfig, make_synthetic
    from da3_splat.files import check_output_dir, write_json

    console = console or Console(stderr=True, soft_wrap=True)
    if cfg.frames < 9:
        raise InputError(f"--frames must be at least 9 (every 8th frame is held out), got {cfg.frames}")
    if cfg.width < 16 or cfg.height < 16:
        raise InputError(f"--width and --height must be at least 16 pixels, got {cfg.width}x{cfg.height}")
    if cfg.refine_steps < 0:
        raise InputError(f"--refine-steps must be 0 or more, got {cfg.refine_steps}")
    if cfg.process_res is not None and cfg.process_res < 14:
        raise InputError(f"--process-res must be at least 14 pixels (one patch), got {cfg.process_res}")
    # (name, refinement steps): the feed-forward run (alone when there is no refinement), then the refined one
    runs = [("feedforward", 0)] if cfg.feedforward or cfg.refine_steps == 0 else []
    runs += [("refined", cfg.refine_steps)] if cfg.refine_steps > 0 else []
    check_output_dir(cfg.output, cfg.overwrite)
    if cfg.output.exists():
        shutil.rmtree(cfg.output)
    logs = cfg.output / "logs"
    logs.mkdir(parents=True)
    t_start = time.perf_counter()

    with console.status("Generating a synthetic scene ..."):
        syn = SyntheticConfig(frames=cfg.frames, height=cfg.height, width=cfg.width)
        (scene,) = make_synthetic(cfg.output / "scene", 1, syn, seed=cfg.seed, workers=1)
    console.print(
        f"[green]✓[/] synthetic scene: {cfg.frames} frames at {cfg.width}x{cfg.height} in {scene}", highlight=False
    )

    results = {}
    for name, steps in runs:
        config = _train(cfg, console, scene, name, steps, logs)
        results[name] = {"config": str(config), **_evaluate(console, config, name, cfg.output, logs)}
    last = runs[-1][0]
    ply_dir = cfg.output / "export"
    if cfg.export:
        _run(
            console,
            "ns-export gaussian-splat",
            [
                _ns_command("ns-export"),
                "gaussian-splat",
                "--load-config",
                results[last]["config"],
                "--output-dir",
                ply_dir,
            ],
            logs / "export.log",
        )
    preview = _preview(cfg.output, [name for name, _ in runs])

    summary = {
        "weights": cfg.weights,
        "scene": str(scene),
        "frames": cfg.frames,
        "refine_steps": cfg.refine_steps,
        "psnr": {k: v["psnr"] for k, v in results.items()},
        "ssim": {k: v["ssim"] for k, v in results.items()},
        "ply": str(ply_dir / "splat.ply") if cfg.export else None,
        "preview": None if preview is None else str(preview),
        "runs": {k: v["config"] for k, v in results.items()},
        "seconds": time.perf_counter() - t_start,
    }
    write_json(cfg.output / "summary.json", summary)
    out = Console(soft_wrap=True, highlight=False)
    out.print(f"\n[bold]da3-splat demo[/] ({summary['seconds'] / 60:.1f} min, weights {cfg.weights})")
    labels = {"feedforward": "feed-forward", "refined": f"+{cfg.refine_steps} refinement steps"}
    width = max(len(labels[name]) for name, _ in runs) + 1
    for name, _ in runs:
        out.print(f"  held-out PSNR, {labels[name] + ':':<{width}} {summary['psnr'][name]:.2f} dB")
    if summary["ply"] is not None:
        out.print(f"  Gaussians (PLY):  {summary['ply']}")
    if preview is not None:
        columns = " | ".join(["held-out view", *(labels[name] for name, _ in runs)])
        out.print(f"  preview grid:     {preview}  ({columns})")
    out.print(f"  nerfstudio runs:  {cfg.output / 'runs'}  (ns-viewer --load-config {summary['runs'][last]})")
    out.print(f"  summary:          {cfg.output / 'summary.json'}")
    if cfg.view:
        from da3_splat.viewer import ViewConfig
        from da3_splat.viewer.app import serve

        serve(ViewConfig(path=Path(summary["runs"][last]).parent))
    return summary
