"""Where the tiny model's novel-view PSNR is lost: its depth's scale, its depth's shape, or the NVS head (issue 5).

    python benchmarks/nvs_tiny_ceiling.py [--scenes data/synthetic/val] [--model da3-tiny-synthetic] [--max-scenes 20]

Same scenes, views and resolution as `benchmarks/nvs_tiny.py` (each scene's eval_index.json, 4 context views,
126x224, posed: GT context cameras). Side by side on every scene:
- the trained NVS head,
- head-free Gaussians from the model's own depth (the issue's baseline),
- the same with the depth multiplied by one oracle factor per scene (the median GT/predicted depth ratio over the
  context views): what a perfect scale alone would give,
- head-free Gaussians from the GT depth: the ceiling of any per-pixel placement at these views,
- for a plane-sweep head, head-free Gaussians at the plane-swept depth (what the head starts from).
Also the depth's error: |log| of the per-scene scale factor, and the mean |log depth error| after it is applied,
and the pose-free cameras' error (what limits the pose-free protocol): relative rotation and translation direction
between the first context camera and each other one, predicted vs GT, in degrees.
Writes benchmarks/results/nvs_tiny_ceiling.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, machine_header, md_table  # benchmarks/ is on sys.path as the script's folder

from da3_splat.build import headfree_gaussians
from da3_splat.data.dataset import NVSDataset, collate
from da3_splat.data.dl3dv import scene_list
from da3_splat.gaussians import Gaussians
from da3_splat.geometry import as_homogeneous, rigid_inverse
from da3_splat.image_metrics import psnr
from da3_splat.model import DA3
from da3_splat.model.preprocess import normalize_float
from da3_splat.nvs import SceneBatch, predict, render_views


def target_psnr(batch: SceneBatch, gaussians: Gaussians) -> float:
    H, W = batch.target_images.shape[-2:]
    rgb, _ = render_views(gaussians, batch.target_w2c, batch.target_K, H, W)
    return float(psnr(rgb.flatten(0, 1).clamp(0, 1), batch.target_images.flatten(0, 1)).mean())


def headfree(batch: SceneBatch, depth: torch.Tensor, conf: torch.Tensor | None) -> Gaussians:
    images = batch.context_images[0].permute(0, 2, 3, 1)
    return Gaussians.stack([headfree_gaussians(depth, images, batch.context_w2c[0], batch.context_K[0], conf)])


def relative_pose_errors(pred_w2c: torch.Tensor, gt_w2c: torch.Tensor) -> tuple[list[float], list[float]]:
    """Degrees of rotation and of translation direction between predicted and GT pose of view j relative to view 0."""
    P, G = as_homogeneous(pred_w2c.float()), as_homogeneous(gt_w2c.float())
    rot, direction = [], []
    for j in range(1, len(P)):
        rp, rg = P[j] @ rigid_inverse(P[0]), G[j] @ rigid_inverse(G[0])
        cos_r = (((rp[:3, :3] @ rg[:3, :3].T).trace() - 1) / 2).clamp(-1, 1)
        cos_t = torch.nn.functional.cosine_similarity(rp[:3, 3], rg[:3, 3], dim=0).clamp(-1, 1)
        rot.append(float(torch.rad2deg(torch.acos(cos_r))))
        direction.append(float(torch.rad2deg(torch.acos(cos_t))))
    return rot, direction


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenes", type=Path, default=Path("data/synthetic/val"))
    p.add_argument("--model", default="da3-tiny-synthetic")
    p.add_argument("--max-scenes", type=int, default=20)
    p.add_argument("--out", type=Path, default=RESULTS / "nvs_tiny_ceiling.md")
    a = p.parse_args()
    if not a.scenes.is_dir():
        raise SystemExit(f"error: {a.scenes} not found; `make tiny-model` generates the held-out scenes")
    model = DA3.from_pretrained(a.model).eval()
    paths = scene_list([a.scenes])[: a.max_scenes]
    data = NVSDataset.for_evaluation(paths, size=(126, 224), num_context=4, downscale=4)
    names = [
        "trained NVS head",
        "head-free, own depth",
        "head-free, own depth x oracle scale",
        "head-free, GT depth",
        "head-free, plane-swept own depth (a plane-sweep head's start)",
    ]
    scores: dict[str, list[float]] = {n: [] for n in names}
    log_scale, log_err, rot_err, dir_err = [], [], [], []
    with torch.inference_mode():
        for i in range(len(data)):
            batch = SceneBatch.from_dataset(collate([data[i]]))
            out = predict(model, batch, posed=True, nvs=model.has_gs_head)
            depth, conf, gt = out["depth"][0], out["depth_conf"][0], batch.context_depth[0]
            ok = torch.isfinite(gt) & (gt > 0) & (depth > 0)
            ratio = (gt[ok].log() - depth[ok].log()).median()
            scaled = depth * ratio.exp()
            log_scale.append(abs(float(ratio)))
            log_err.append(float((scaled[ok].log() - gt[ok].log()).abs().mean()))
            if model.has_gs_head:
                scores[names[0]].append(target_psnr(batch, out["gaussians"]))
            scores[names[1]].append(target_psnr(batch, headfree(batch, depth, conf)))
            scores[names[2]].append(target_psnr(batch, headfree(batch, scaled, conf)))
            scores[names[3]].append(target_psnr(batch, headfree(batch, gt, None)))
            if "swept_depth" in out:
                scores[names[4]].append(target_psnr(batch, headfree(batch, out["swept_depth"][0], conf)))
            pose_free = model(normalize_float(batch.context_images), return_rays=False)
            r, t = relative_pose_errors(pose_free["extrinsics"][0], batch.context_w2c[0])
            rot_err += r
            dir_err += t
            line = "  ".join(f"{n}: {v[-1]:.2f}" for n, v in scores.items() if v)
            print(f"{paths[i].name}: scale x{float(ratio.exp()):.2f}  {line}", flush=True)

    base = float(np.mean(scores[names[1]]))
    rows = [[n, f"{np.mean(v):.2f}", f"{np.mean(v) - base:+.2f}"] for n, v in scores.items() if v]
    text = machine_header(
        "Where the tiny model's NVS PSNR goes (`benchmarks/nvs_tiny_ceiling.py`)",
        [
            f"- model: {a.model}; {len(paths)} held-out scenes from {a.scenes}; 126x224, 4 context views, targets every "
            "8th frame, posed (GT context cameras)"
        ],
    )
    text += "\n## Target-view PSNR (mean over scenes)\n\n"
    text += md_table(["Gaussians", "PSNR (dB)", "vs head-free, own depth"], rows)
    text += "\n## The model's posed depth against GT (context views)\n\n"
    text += md_table(
        ["measure", "median", "mean", "max"],
        [
            ["per-scene scale error, x", *(f"{np.exp(f(log_scale)):.2f}" for f in (np.median, np.mean, np.max))],
            ["mean abs log error after that scale", *(f"{f(log_err):.3f}" for f in (np.median, np.mean, np.max))],
        ],
    )
    text += "\n## Pose-free cameras against GT (each context view relative to the first; degrees)\n\n"
    text += md_table(
        ["measure", "median", "mean", "max"],
        [
            [name, *(f"{f(v):.1f}" for f in (np.median, np.mean, np.max))]
            for name, v in (("rotation error", rot_err), ("translation direction error", dir_err))
        ],
    )
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
