"""``ns-train da3-splat ... da3-images`` (DA3 predicts the cameras) with and without camera refinement, scored with
and without the alignment of each held-out pose (issue 17, item 2).

An unposed synthetic scene with ground truth (``make-synthetic``, one scene, seed 4242; its ``images_4/`` is the
da3-images input) -> ``ns-train da3-splat`` twice: camera refinement on, then off with the first run's predicted
cameras (``da3-images --cameras``, so both start from the same cameras and Gaussians) -> ``ns-eval`` both: held-out
PSNR after aligning each held-out pose (the method's default for predicted cameras) and at its predicted pose
(``psnr_unaligned``) -> the training cameras' errors against the ground truth, as predicted and as refined
(camera centres Sim(3)-aligned to the truth by Umeyama; pairwise rotation and translation-direction errors).

    .venv/bin/python benchmarks/ns_camera_refinement.py            # ~8 min on 2 quiet CPU cores -> results/
    .venv/bin/python benchmarks/ns_camera_refinement.py --steps 10 --frames 8 --out /tmp/x.md   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # nerfstudio compiles a helper we do not call

import torch  # noqa: E402
import yaml  # noqa: E402
from _common import RESULTS, loadavg, machine_header, md_table  # noqa: E402

from da3_splat import BUNDLED_MODEL  # noqa: E402
from da3_splat.geometry import apply_sim3_to_w2c, camera_centers, opengl_c2w_to_opencv_w2c, umeyama  # noqa: E402
from da3_splat.geometry_metrics import relative_pose_errors  # noqa: E402

ENV = {**os.environ, "TORCHDYNAMO_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
RUNS = ("on", "off")  # camera refinement


def run(args: list, log: Path) -> float:
    """One command, its output in ``log``; -> seconds. A failure ends the script with the log's last line."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        res = subprocess.run([str(a) for a in args], stdout=f, stderr=subprocess.STDOUT, env=ENV)
    if res.returncode != 0:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
        sys.exit(f"error: {Path(str(args[0])).name} failed (exit {res.returncode}): {tail} -- see {log}")
    return time.perf_counter() - t0


def ns(name: str) -> Path:
    return Path(sys.executable).parent / name


def train(a, photos: Path, runs: Path, name: str, cameras: Path | None, logs: Path) -> tuple[Path, float]:
    """``ns-train da3-splat`` with camera refinement ``name`` (on/off); -> (its config.yml, seconds)."""
    extra = [] if a.eval_steps is None else ["--pipeline.model.eval-pose-refinement-steps", a.eval_steps]
    if a.camera_warmup is not None:
        extra += ["--optimizers.camera-opt.scheduler.warmup-steps", a.camera_warmup]
    if a.process_res:
        extra += ["--pipeline.model.process-res", a.process_res]
    parser = ["da3-images", "--weights", a.weights, "--device", a.device]
    parser += ["--cameras", cameras] if cameras is not None else []
    parser += ["--process-res", a.process_res] if a.process_res else []
    args = [
        ns("ns-train"),
        "da3-splat",
        "--data",
        photos,
        "--output-dir",
        runs,
        "--experiment-name",
        name,
        "--timestamp",
        "run",
        "--machine.device-type",
        a.device,
        "--vis",
        "tensorboard",
        "--max-num-iterations",
        a.steps,
        "--steps-per-eval-all-images",
        1_000_000,  # ns-eval scores the end result; no evaluation while training
        "--steps-per-eval-image",
        1_000_000,
        "--pipeline.model.camera-refinement",
        name,
        "--pipeline.model.weights",
        a.weights,
        "--pipeline.model.max-gaussians",
        a.max_gaussians,
        *extra,
        *parser,
    ]
    seconds = run(args, logs / f"train_{name}.log")
    return runs / name / "da3-splat" / "run" / "config.yml", seconds


def evaluate(config: Path, out: Path, logs: Path, name: str) -> tuple[dict, float]:
    metrics = out / f"metrics_{name}.json"
    seconds = run([ns("ns-eval"), "--load-config", config, "--output-path", metrics], logs / f"eval_{name}.log")
    return json.loads(metrics.read_text())["results"], seconds


def training_cameras(config_file: Path) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """-> (image names, predicted c2w (N, 3, 4), refined c2w) of a run's training views, in nerfstudio's
    normalised frame; refined = predicted when the run had no camera optimiser."""
    from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig

    config = yaml.load(config_file.read_text(), Loader=yaml.Loader)
    parser_config = config.pipeline.datamanager.dataparser
    if parser_config.data in (None, Path()):
        parser_config.data = config.pipeline.datamanager.data
    outputs = parser_config.setup().get_dataparser_outputs("train")  # reads the run's transforms.json
    cameras = outputs.cameras
    (ckpt,) = (config_file.parent / "nerfstudio_models").glob("*.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["pipeline"]
    adjustment = state.get("_model.camera_optimizer.pose_adjustment")
    predicted = cameras.camera_to_worlds.clone()
    if adjustment is None:
        return [p.name for p in outputs.image_filenames], predicted, predicted
    optimiser = CameraOptimizerConfig(mode=config.pipeline.model.camera_optimizer.mode).setup(
        num_cameras=len(cameras), device="cpu"
    )
    optimiser.pose_adjustment.data.copy_(adjustment)
    refined = []
    with torch.no_grad():
        for i in range(len(cameras)):  # nerfstudio's own composition, as in training
            camera = cameras[i : i + 1]
            camera.metadata = {"cam_idx": i}
            refined.append(optimiser.apply_to_camera(camera)[0])
    return [p.name for p in outputs.image_filenames], predicted, torch.stack(refined)


def ground_truth(scene: Path) -> dict[str, torch.Tensor]:
    """Image name -> true c2w (OpenGL, 4x4) from the synthetic scene's transforms.json."""
    frames = json.loads((scene / "transforms.json").read_text())["frames"]
    return {Path(f["file_path"]).name: torch.tensor(f["transform_matrix"], dtype=torch.float64) for f in frames}


def camera_errors(c2w: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Median pairwise rotation / translation-direction errors (degrees) and the median camera-centre error after
    a Sim(3) (Umeyama on the centres), as a percentage of the true cameras' extent (their spread's RMS radius)."""
    pred = opengl_c2w_to_opencv_w2c(c2w.double())
    gt = opengl_c2w_to_opencv_w2c(truth)
    R, t, s = umeyama(camera_centers(pred), camera_centers(gt))
    aligned = apply_sim3_to_w2c(pred, R, t, s)
    rot, trans = relative_pose_errors(aligned, gt)
    centres = camera_centers(gt)
    extent = (centres - centres.mean(0)).norm(dim=-1).square().mean().sqrt()
    centre_error = (camera_centers(aligned) - centres).norm(dim=-1).median() / extent
    return {"rot": float(rot.median()), "trans": float(trans.median()), "centre": 100 * float(centre_error)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="training steps per run")
    p.add_argument("--frames", type=int, default=24, help="frames of the synthetic scene (every 8th held out)")
    p.add_argument("--height", type=int, default=135)
    p.add_argument("--width", type=int, default=240)
    p.add_argument("--seed", type=int, default=4242, help="seed of the synthetic scene")
    p.add_argument("--weights", default=BUNDLED_MODEL, help="DA3 weights: cameras and the Gaussians' start")
    p.add_argument("--process-res", type=int, default=None, help="DA3's image size (default: the model's own)")
    p.add_argument("--max-gaussians", type=int, default=60_000)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--eval-steps", type=int, default=None, help="eval pose alignment steps (default: auto, 100)")
    p.add_argument("--camera-warmup", type=int, default=None, help="camera optimiser warm-up steps (method: 1000)")
    p.add_argument("--keep", type=Path, default=None, help="keep the scene and runs in this folder")
    p.add_argument("--out", type=Path, default=RESULTS / "ns_camera_refinement.md")
    a = p.parse_args()

    t0, load_before = time.perf_counter(), loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = a.keep or Path(tmp)
        logs = work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        synthetic = [sys.executable, "-m", "da3_splat.cli", "make-synthetic", work / "synthetic", "--scenes", 1]
        synthetic += ["--frames", a.frames, "--height", a.height, "--width", a.width, "--seed", a.seed, "--overwrite"]
        run(synthetic, logs / "make_synthetic.log")
        scene = work / "synthetic" / "scene_0000"
        truth = ground_truth(scene)
        results, seconds, cams = {}, {}, {}
        cameras = None
        for name in RUNS:
            config, train_s = train(a, scene / "images_4", work / "runs", name, cameras, logs)
            cameras = config.parent / "transforms.json"  # the next run starts from the same predicted cameras
            results[name], eval_s = evaluate(config, work, logs, name)
            seconds[name] = (train_s, eval_s)
            cams[name] = training_cameras(config)
        optimiser = yaml.load(config.read_text(), Loader=yaml.Loader).optimizers["camera_opt"]

    names, predicted, refined = cams["on"]
    gt = torch.stack([truth[n] for n in names])
    errors = {"predicted by DA3": camera_errors(predicted, gt), "refined in training": camera_errors(refined, gt)}
    sched = optimiser["scheduler"]
    extra = [
        f"- scene: `make-synthetic --scenes 1 --frames {a.frames} --height {a.height} --width {a.width} "
        f"--seed {a.seed}`, its images_4/ as `da3-images` input (every 8th frame held out: {len(truth) - len(names)} "
        f"held-out, {len(names)} training views)",
        f"- `ns-train da3-splat`: {a.steps} steps, device {a.device}, weights {a.weights}, max Gaussians "
        f"{a.max_gaussians}; camera optimiser SO3xR3, Adam lr {optimiser['optimizer'].lr:g}, warm-up "
        f"{sched.warmup_steps} steps from {sched.lr_pre_warmup:g}, decay to {sched.lr_final:g} at {sched.max_steps}",
        f"- eval alignment steps: {'auto (100)' if a.eval_steps is None else a.eval_steps}",
        f"- load average before: {load_before}; after: {loadavg()}",
        "",
    ]
    text = machine_header("nerfstudio with predicted cameras (`benchmarks/ns_camera_refinement.py`)", extra)
    text += "\nHeld-out views (mean over them; aligned: each held-out pose refined on its image, Gaussians frozen):\n\n"
    rows = []
    for name in RUNS:
        r = {"psnr_unaligned": results[name]["psnr"], **results[name]}  # no alignment (--eval-steps 0): the same
        nan = float("nan")
        rows.append(
            [
                f"camera refinement {name}",
                f"{r['psnr_unaligned']:.2f}",
                f"{r['psnr']:.2f}",
                f"{r['ssim']:.3f}",
                f"{r.get('pose_align_rotation_deg', nan):.2f}",
                f"{100 * r.get('pose_align_translation_rel', nan):.2f}",
                f"{seconds[name][0]:.0f} / {seconds[name][1]:.0f}",
            ]
        )
    headers = ["run", "PSNR at predicted pose", "PSNR aligned", "SSIM aligned", "alignment: rotation (deg)"]
    headers += ["alignment: translation (% depth)", "train / eval (s)"]
    text += md_table(headers, rows)
    text += "\nTraining cameras vs ground truth (Sim(3)-aligned centres; medians):\n\n"
    rows = [[k, f"{e['rot']:.3f}", f"{e['trans']:.3f}", f"{e['centre']:.3f}"] for k, e in errors.items()]
    text += md_table(["cameras", "rotation error (deg)", "translation-direction error (deg)", "centre error (%)"], rows)
    text += f"\nwall time: {(time.perf_counter() - t0) / 60:.1f} min\n"
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
