"""The match cameras' pose graph against the spanning tree alone (``cameras_from_matches(refine=...)``), on the
same network outputs: the tree places each view along its best-supported pair; the graph then adjusts every view
to all fitted pairs (``da3_splat.model.match_pose.refine_pose_graph``).

    .venv/bin/python benchmarks/pose_graph.py            # ~6 min on 2 cores -> results/pose_graph.md

Three kinds of input, each run once through the bundled model and then solved both ways:
- the 4-view context sets of the held-out scenes (each scene's eval_index.json, as ``nvs_tiny.py`` scores them),
  with the predicted depth and, to separate the solver from the depth, with the ground-truth depth;
- 21 views of each held-out scene (every other non-target frame: the size of a small ``da3-images`` capture);
- single passes over 300-frame synthetic trajectories, one of each path kind, where the candidate pairs are only
  each frame's neighbours and the reference (beyond ``ALL_PAIRS_UP_TO``), and where the library keeps the tree
  (beyond ``GRAPH_UP_TO``): this table is why. Scored as ``streaming.py`` scores drift (ATE over the extent,
  rotation error 100 frames apart).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from _common import RESULTS, machine_header, md_table
from recipe_compare import SIZE
from streaming import drift

from da3_splat.data.dataset import NVSDataset, collate
from da3_splat.data.dl3dv import load_views, read_scene, scene_list
from da3_splat.data.synthetic import TRAJECTORY_KINDS, SyntheticConfig, render_scene
from da3_splat.geometry_metrics import pose_scores, relative_pose_errors
from da3_splat.model import match_pose
from da3_splat.model.preprocess import normalize_float
from da3_splat.nvs import SceneBatch
from da3_splat.runtime import load_model

SOLVERS = {"tree": False, "tree + pose graph": True}


def forward(model, images: torch.Tensor) -> dict:
    """The network outputs the solver reads, for (S, 3, H, W) images in [0, 1]."""
    with torch.inference_mode():
        out = model(normalize_float(images[None]), keep_features=True)
    return {"features": out.features[0], "depth": out.depth, "K": out.intrinsics, "ref": out.reference_view}


def solve(o: dict, refine: bool, depth=None, K=None) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    d, k = (o["depth"], o["K"]) if depth is None else (depth, K)
    cams = match_pose.cameras_from_matches(o["features"], d, k, o["ref"], refine=refine)
    return cams.extrinsics[0], time.perf_counter() - t0


def pairwise_rows(name: str, sets: list[tuple[dict, torch.Tensor, torch.Tensor | None, torch.Tensor | None]]):
    """One row per solver (and per depth where GT depth is given): pooled pairwise medians and AUC@15."""
    rows = []
    depths = ["predicted"] + (["ground truth"] if sets[0][2] is not None else [])
    for depth_kind in depths:
        for label, refine in SOLVERS.items():
            rot, trans, secs = [], [], []
            for o, gt_w2c, gt_depth, gt_K in sets:
                kw = {"depth": gt_depth[None], "K": gt_K[None]} if depth_kind == "ground truth" else {}
                w2c, s = solve(o, refine, **kw)
                r, t = relative_pose_errors(w2c, gt_w2c)
                rot.append(r), trans.append(t), secs.append(s)
            sc = pose_scores(torch.cat(rot), torch.cat(trans))
            views = o["features"].shape[1]
            rows.append([name, views, depth_kind, label, f"{sc.rotation_median:.2f}", f"{sc.translation_median:.2f}",
                         f"{sc.auc15:.3f}", sc.pairs, f"{sum(secs) / len(secs):.2f}"])  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="da3-tiny-synthetic")
    p.add_argument("--val", type=Path, default=Path("data/synthetic/val"))
    p.add_argument("--scenes", type=int, default=20)
    p.add_argument("--frames", type=int, default=300, help="frames of each long trajectory")
    p.add_argument("--out", type=Path, default=RESULTS / "pose_graph.md")
    a = p.parse_args()
    t_start = time.perf_counter()
    model = load_model(a.model, "cpu")
    model.eval()
    scenes = scene_list([a.val])[: a.scenes]

    four = []
    data = NVSDataset.for_evaluation(scenes, size=SIZE, num_context=4, downscale=4)
    for i in range(len(data)):
        b = SceneBatch.from_dataset(collate([data[i]]), "cpu")
        o = forward(model, b.context_images[0])
        four.append((o, b.context_w2c[0], b.context_depth[0].float(), b.context_K[0].float()))
    rows = pairwise_rows("held-out context sets", four)

    many = []
    for path in scenes:
        scene = read_scene(path, downscale=4)
        keep = [i for i in range(len(scene)) if i % 8 != 0][::2][:21]
        v = load_views(scene, keep, SIZE)
        many.append((forward(model, v["images"]), v["w2c"], v["depth"].float(), v["intrinsics"].float()))
    rows += pairwise_rows("21 views of each held-out scene", many)

    long_rows = []
    for seed, kind in enumerate(TRAJECTORY_KINDS, start=3):
        scene = render_scene(
            SyntheticConfig(frames=a.frames, height=SIZE[0], width=SIZE[1], trajectories=(kind,)), seed
        )
        images = torch.from_numpy(scene.images).permute(0, 3, 1, 2).float() / 255
        o = forward(model, images)
        for label, refine in SOLVERS.items():
            # the library keeps the tree beyond GRAPH_UP_TO views; lift that limit to measure the graph there
            limit = match_pose.GRAPH_UP_TO
            match_pose.GRAPH_UP_TO = a.frames
            try:
                w2c, secs = solve(o, refine)
            finally:
                match_pose.GRAPH_UP_TO = limit
            ate, rot, step = drift(w2c.numpy(), scene.w2c)
            long_rows.append(
                [f"{kind} (seed {seed})", a.frames, label, f"{ate:.3f}", f"{rot:.2f} (D={step})", f"{secs:.1f}"]
            )
        print(long_rows[-2:], flush=True)

    text = machine_header("Match cameras: spanning tree vs tree + pose graph (`benchmarks/pose_graph.py`)", [
        f"- model: {a.model}; {SIZE[1]}x{SIZE[0]}; held out: {a.val}, first {len(scenes)} scenes",
        f"- wall: {(time.perf_counter() - t_start) / 60:.1f} min",
    ])  # fmt: skip
    text += "\n## Pairwise errors (all view pairs of every set pooled; medians in degrees)\n\n"
    text += md_table(["set", "views", "depth", "solver", "rotation", "translation direction", "AUC@15", "pairs",
                      "solver s / set"], rows)  # fmt: skip
    text += (
        f"\n## Single passes over {a.frames}-frame trajectories (candidate pairs: neighbours within "
        f"{match_pose.NEIGHBOURS} and the reference)\n\n"
    )
    text += md_table(["trajectory", "frames", "solver", "ATE / extent", "rot. err deg, frames D apart", "solver s"],
                     long_rows)  # fmt: skip
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
