"""Pose-free cameras from the camera decoder against cameras from the model's own patch matches and depth
(``pose_solver: matches``, :mod:`da3_splat.model.match_pose`), along the checkpoints of stage-1 runs (issue 16).

Every scored checkpoint runs once per item; the match cameras are solved from that pass's features and depth,
exactly as a model set to ``pose_solver: matches`` does (tests/model/test_match_pose.py checks the equality). A
third column solves the same matches with the GT depth and intrinsics: how much the predicted depth costs.

    python benchmarks/match_pose.py --run "S: matching 1.0" RUN [KEPT] --run ... [--val data/synthetic/val] \
        [--scenes 20] [--every 1000] [--out results/match_pose.md]

RUN is a `da3-splat train` output folder (config.json, checkpoints/, model/ when finished); KEPT an optional
folder of step_* checkpoints copied from it before the trainer pruned them (it keeps 3).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, machine_header, md_table  # benchmarks/ is on sys.path as the script's folder
from geometry_gap import identity_rotation_error
from recipe_compare import SIZE, describe

from da3_splat.data.dataset import NVSDataset, collate
from da3_splat.data.dl3dv import scene_list
from da3_splat.geometry_metrics import depth_scores, pose_scores, relative_pose_errors
from da3_splat.model.match_pose import cameras_from_matches
from da3_splat.model.preprocess import normalize_float
from da3_splat.nvs import SceneBatch
from da3_splat.runtime import load_model, set_pose_solver
from da3_splat.train.checkpoint import MODEL_FILE
from da3_splat.train.config import load_preset
from da3_splat.train.trainer import build_model


def checkpoints(run: Path, kept: Path | None, every: int) -> list[tuple[str, Path]]:
    """(step label, model.safetensors) at the multiples of ``every``, and the final model when no checkpoint holds
    its weights."""
    found = {}
    for folder in [run / "checkpoints"] + ([kept] if kept else []):
        for d in sorted(folder.glob("step_*")):
            step = int(d.name.split("_")[1])
            if step % every == 0 and (d / MODEL_FILE).is_file():
                found[step] = d / MODEL_FILE
    out = [(str(s), found[s]) for s in sorted(found)]
    steps = json.loads((run / "config.json").read_text())["steps"]
    if (run / "model" / "model.safetensors").is_file() and steps not in found:  # else the same weights twice
        out.append(("final", run / "model" / "model.safetensors"))
    return out


def load(run: Path, weights: Path):
    """The checkpoint's (training keys) or the final model's (official keys) weights, cameras from the decoder:
    the scoring solves the matches itself from the same pass."""
    if weights.parent.name == "model":
        model = load_model(str(weights.parent), "cpu")
    else:
        from safetensors.torch import load_file

        model = build_model(load_preset(str(run / "config.json")), torch.device("cpu"))
        model.load_state_dict(load_file(str(weights)))
    set_pose_solver(model, "decoder")
    return model.eval()


def score(model, data) -> dict:
    errors = {k: ([], []) for k in ("decoder", "matches", "matches_gt_depth")}
    abs_rel = {"decoder": [], "matches": []}
    inliers = []
    with torch.inference_mode():
        for i in range(len(data)):
            b = SceneBatch.from_dataset(collate([data[i]]), "cpu")
            out = model(normalize_float(b.context_images), keep_features=True)  # decoder cameras (as configured)
            feats, ref = out.features[0], out.reference_view
            solved = cameras_from_matches(feats, out.depth, out.intrinsics, ref)
            with_gt = cameras_from_matches(feats, b.context_depth.float(), b.context_K.float(), ref)
            abs_rel["decoder"].append(depth_scores(out.depth, b.context_depth).abs_rel)
            in_ref_units = out.depth / solved.depth_scale[..., None, None]  # what a model set to matches returns
            abs_rel["matches"].append(depth_scores(in_ref_units, b.context_depth).abs_rel)
            for key, w2c in (
                ("decoder", out.extrinsics),
                ("matches", solved.extrinsics),
                ("matches_gt_depth", with_gt.extrinsics),
            ):
                rot, trans = relative_pose_errors(w2c[0], b.context_w2c[0])
                errors[key][0].extend(rot.tolist())
                errors[key][1].extend(trans.tolist())
            inliers.extend(solved.inliers[0][solved.inliers[0] > 0].tolist())
    res = {k: pose_scores(r, t) for k, (r, t) in errors.items()}
    res["abs_rel"] = {k: float(np.mean(v)) for k, v in abs_rel.items()}
    res["inliers"] = float(np.median(inliers)) if inliers else 0.0
    return res


def pose_free_nvs(model, data) -> dict:
    """The `da3-splat eval` protocol, pose-free, once per pose solver: PSNR / SSIM of every method, the depth and
    camera scores (as metrics.json reports them)."""
    from dataclasses import replace

    from da3_splat.eval_protocol import GEOMETRY_KEYS, evaluate_scene, geometry_summary

    out = {}
    for solver in ("decoder", "matches"):
        model.config = replace(model.config, pose_solver=solver)
        psnr, ssim, depth, rot, trans = {}, {}, [], [], []
        for i in range(len(data)):
            scores = evaluate_scene(model, SceneBatch.from_dataset(collate([data[i]]), "cpu"), "pose-free", True)
            scores = scores["scores"]
            for method, v in scores.items():
                if method not in GEOMETRY_KEYS:
                    psnr.setdefault(method, []).append(v["psnr"])
                    ssim.setdefault(method, []).append(v["ssim"])
            depth.append(scores["depth"])
            rot.extend(scores["pose"]["rotation"])
            trans.extend(scores["pose"]["translation"])
        geo = geometry_summary(depth, rot, trans)
        out[solver] = {
            "methods": {m: (float(np.mean(psnr[m])), float(np.mean(ssim[m]))) for m in psnr},
            "abs_rel": geo["depth"]["abs_rel"],
            "pose": geo["pose"],
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", nargs="+", action="append", required=True, metavar=("LABEL", "RUN"))
    p.add_argument("--val", type=Path, default=Path("data/synthetic/val"))
    p.add_argument("--scenes", type=int, default=20)
    p.add_argument("--every", type=int, default=1000)
    p.add_argument("--note", action="append", default=[])
    p.add_argument(
        "--nvs",
        nargs=2,
        action="append",
        default=[],
        metavar=("LABEL", "MODEL"),
        help="also score this model's pose-free NVS with each pose solver (da3-splat eval's protocol)",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "match_pose.md")
    a = p.parse_args()
    torch.manual_seed(0)
    data = NVSDataset.for_evaluation(scene_list([a.val])[: a.scenes], size=SIZE, num_context=4, downscale=4)
    baseline = identity_rotation_error(data)
    rows, header = [], []
    t0 = time.perf_counter()
    for label, run, *kept in a.run:
        run = Path(run)
        header.append(f"- {label}: `{run}`: {describe(run)}")
        for step, weights in checkpoints(run, Path(kept[0]) if kept else None, a.every):
            r = score(load(run, weights), data)
            d, m, g = r["decoder"], r["matches"], r["matches_gt_depth"]
            rows.append(
                [
                    label,
                    step,
                    f"{r['abs_rel']['decoder']:.3f} / {r['abs_rel']['matches']:.3f}",
                    f"{d.rotation_median:.2f} / {d.translation_median:.2f}",
                    f"**{m.rotation_median:.2f}** / {m.translation_median:.2f}",
                    f"{m.auc5:.3f} / {m.auc15:.3f}",
                    f"{r['inliers']:.0f}",
                    f"{g.rotation_median:.2f} / {g.translation_median:.2f}",
                ]
            )
            print(" | ".join(map(str, rows[-1])), flush=True)
    nvs_rows = []
    for label, src in a.nvs:
        res = pose_free_nvs(load_model(src, "cpu").eval(), data)
        for solver, r in res.items():
            for method, (psnr, ssim) in r["methods"].items():
                nvs_rows.append(
                    [
                        label,
                        solver,
                        method,
                        f"{psnr:.2f} / {ssim:.3f}",
                        f"{r['abs_rel']:.3f}",
                        f"{r['pose']['rotation_median']:.2f} / {r['pose']['translation_median']:.2f}",
                    ]
                )
                print(" | ".join(nvs_rows[-1]), flush=True)
    extra = [
        *header,
        *[f"- {n}" for n in a.note],
        f"- held out: {a.val}, first {a.scenes} scenes, 4 context views from each scene's eval_index.json, "
        f"{SIZE[0]}x{SIZE[1]}, pose-free; {len(data) * 6} view pairs; identity-rotation baseline {baseline:.2f} deg",
        "- matches: mutual nearest neighbours of the first output layer's patch features (the layer the matching "
        "term trains) for every pair of views, soft-argmax below a patch, lifted with the predicted depth (the "
        "decoder's intrinsics), RANSAC similarity fit, translation direction from the epipolar constraint; views "
        "placed from the reference along the best-supported pairs",
        "- AbsRel: one median scale per scene; under matches each view's depth is first brought into the reference "
        "view's units (the fitted scale), as the model returns it",
        "- bars (issue 16, item 3): AbsRel <= 0.15, rotation <= 5 deg, translation direction <= 15 deg",
        f"- scoring took {time.perf_counter() - t0:.0f} s",
    ]
    lines = [
        machine_header("Pose-free cameras: the decoder against the model's own matches (issue 16)", extra),
        "Medians over all pairs of all scenes (degrees).",
        "",
        md_table(
            [
                "run",
                "step",
                "AbsRel (decoder / matches)",
                "decoder rot. / transl.",
                "matches rot. / transl.",
                "matches AUC@5 / AUC@15",
                "inlier matches per view",
                "matches on GT depth rot. / transl.",
            ],
            rows,
        ),
    ]
    if nvs_rows:
        lines += [
            "",
            "## Pose-free novel-view synthesis with each pose solver",
            "",
            "`da3-splat eval`'s protocol on the same scenes and context views (every 8th frame a target; the "
            "predicted cameras aligned to the GT on the first context view; the Gaussians placed with them).",
            "",
            md_table(
                ["model", "pose solver", "method", "PSNR / SSIM", "AbsRel", "rot. / transl. (median deg)"],
                nvs_rows,
            ),
        ]
    a.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
