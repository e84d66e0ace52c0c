"""Stage-1 recipes side by side (issue 16): the held-out validation curves that each training run logged
(metrics.jsonl, the same 8 val scenes and protocol for every run), and each run's last weights (its final model,
or the newest checkpoint of a run stopped early) scored once more with its cameras from the camera decoder and
from the ray head's pose solver (DA3's ``use_ray_pose``), beside the baseline that needs no model (identity
relative rotations).

    python benchmarks/recipe_compare.py RUN [RUN ...] --labels "240 scenes x 48 frames" "2000 scenes x 8 frames" \
        [--note "how the data was made" ...] [--val data/synthetic/val] [--scenes 8] [--out results/recipe_compare.md]

A RUN is a `da3-splat train` output folder (config.json, metrics.jsonl, model/).
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

from da3_splat.data.dataset import NVSDataset, collate
from da3_splat.data.dl3dv import scene_list
from da3_splat.geometry_metrics import depth_scores, relative_pose_errors
from da3_splat.model.preprocess import normalize_float
from da3_splat.nvs import SceneBatch
from da3_splat.runtime import load_model

SIZE = (126, 224)


def val_curve(run: Path) -> list[dict]:
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        d = json.loads(line)
        if "val/rotation_median" in d:
            rows.append(d)
    return rows


def last_matching_accuracy(run: Path, last: int = 10) -> str:
    """Median top-1 accuracy of the matching term over the run's last ``last`` logged training steps ('' if off)."""
    values = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        d = json.loads(line)
        if "matching/accuracy" in d:
            values.append(d["matching/accuracy"])
    return f"{np.median(values[-last:]):.2f}" if values else ""


def camera_sources(model, data) -> dict:
    """Median pairwise rotation / translation-direction errors (degrees) of the cameras from the decoder and
    from the ray solver, and the pose-free depth AbsRel, over the evaluation items."""
    errs = {"decoder": ([], []), "rays": ([], [])}
    abs_rel, turned = [], []
    alive = torch.zeros(model.cam_dec.backbone[0].out_features, dtype=torch.bool)

    def count_alive(module, args, output):  # a ReLU unit that is 0 for every view of every scene is dead
        alive.logical_or_((output > 0).flatten(0, -2).any(0))

    hook = model.cam_dec.backbone[1].register_forward_hook(count_alive)
    with torch.inference_mode():
        for i in range(len(data)):
            b = SceneBatch.from_dataset(collate([data[i]]), "cpu")
            x = normalize_float(b.context_images)
            for source, use_rays in (("decoder", False), ("rays", True)):
                out = model(x, use_ray_pose=use_rays)
                rot, trans = relative_pose_errors(out["extrinsics"][0], b.context_w2c[0])
                errs[source][0].extend(rot.tolist())
                errs[source][1].extend(trans.tolist())
                if source == "decoder":  # how far the predicted cameras turn between views (0: collapsed)
                    eye = torch.eye(4, dtype=torch.float64).expand(out["extrinsics"].shape[1], 4, 4)
                    turned.extend(relative_pose_errors(out["extrinsics"][0], eye)[0].tolist())
            abs_rel.append(depth_scores(out["depth"], b.context_depth).abs_rel)
    out = {k: (float(np.median(r)), float(np.median(t))) for k, (r, t) in errs.items()}
    hook.remove()
    out["abs_rel"] = float(np.mean(abs_rel))
    out["turned"] = float(np.median(turned))
    out["alive"] = f"{int(alive.sum())} / {alive.numel()}"
    return out


def run_model(run: Path):
    """The run's final model, or for a run stopped early its newest checkpoint -> (model, what was loaded)."""
    if (run / "model").is_dir():
        return load_model(str(run / "model"), "cpu").eval(), "final model"
    from da3_splat.train.checkpoint import load_checkpoint
    from da3_splat.train.config import load_preset
    from da3_splat.train.trainer import build_model

    ckpt = load_checkpoint(run / "checkpoints")
    model = build_model(load_preset(str(run / "config.json")), torch.device("cpu"))
    model.load_state_dict(ckpt.model_state)
    return model.eval(), f"checkpoint of step {ckpt.step} (stopped early)"


def describe(run: Path) -> str:
    cfg = json.loads((run / "config.json").read_text())
    d, o, m, loss = cfg["data"], cfg["optim"], cfg["model"], cfg["loss"]
    extra = [f"weights {m['weights']}"] if m["weights"] != "arch:arch/da3-tiny.json" else []
    extra += [f"init {m['init']}"] if m.get("init", "torch") != "torch" else []
    extra += [f"matching {loss['matching']}"] if loss.get("matching", 0) else []
    off = [k for k, v in loss.get("terms", {}).items() if v == 0]
    extra += [f"no {'/'.join(off)} terms"] if off else []
    return (
        f"train {', '.join(map(str, d['train']))}; {cfg['steps']} steps, batch {o['batch_size']}, lr {o['lr']}, "
        f"{d['height']}x{d['width']}, {d['context_views'][0]}-{d['context_views'][1]} views from a "
        f"{d['window'][0]}-{d['window'][1]}-frame window, posed {cfg['posed']}" + "".join(f", {e}" for e in extra)
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--labels", nargs="+", required=True)
    p.add_argument("--val", type=Path, default=Path("data/synthetic/val"))
    p.add_argument("--scenes", type=int, default=8)
    p.add_argument("--note", action="append", default=[], help="a line for the header (how the data was made)")
    p.add_argument("--out", type=Path, default=RESULTS / "recipe_compare.md")
    p.add_argument("--title", default="Stage-1 recipes side by side (issue 16)")
    a = p.parse_args()
    if len(a.labels) != len(a.runs):
        p.error("give one --labels entry per run")
    torch.manual_seed(0)
    data = NVSDataset.for_evaluation(scene_list([a.val])[: a.scenes], size=SIZE, num_context=4, downscale=4)
    baseline = identity_rotation_error(data)
    curves, finals = [], []
    for label, run in zip(a.labels, a.runs):
        for d in val_curve(run):
            curves.append(
                [
                    label,
                    d["step"],
                    f"{d['val/depth_abs_rel_pose_free']:.3f}",
                    f"{d['val/rotation_median']:.2f}",
                    f"{d['val/translation_median']:.2f}",
                ]
            )
        t0 = time.perf_counter()
        model, loaded = run_model(run)
        s = camera_sources(model, data)
        finals.append(
            [
                label,
                loaded,
                f"{s['abs_rel']:.3f}",
                f"{s['decoder'][0]:.2f}",
                f"{s['decoder'][1]:.2f}",
                f"{s['turned']:.2f}",
                s["alive"],
                last_matching_accuracy(run),
                f"{s['rays'][0]:.2f}",
                f"{s['rays'][1]:.2f}",
                f"{time.perf_counter() - t0:.0f}",
            ]
        )
    runs = [f"- {label}: `{run}`: {describe(run)}" for label, run in zip(a.labels, a.runs)]
    text = machine_header(
        a.title,
        [
            *runs,
            *(f"- {line}" for line in a.note),
            f"- held out: {a.val}, first {a.scenes} scenes, 4 context views from each scene's eval_index.json, "
            f"{SIZE[0]}x{SIZE[1]}, pose-free; identity-rotation baseline {baseline:.2f} deg",
            "- bars (issue 16, item 3): AbsRel <= 0.15, rotation <= 5 deg, translation direction <= 15 deg",
        ],
    )
    text += "\n## Validation during training (camera decoder)\n\n"
    text += md_table(["run", "step", "AbsRel", "rot. median (deg)", "transl. dir. median (deg)"], curves)
    text += "\n## Last weights: cameras from the decoder and from the ray solver\n\n"
    text += (
        "'decoder's relative rotation' is the median angle between the decoder's cameras of a pair, whatever the "
        f"truth: near 0 the decoder predicts no turn at all (collapsed); the GT median is {baseline:.2f} deg. "
        "'ReLUs alive': units of the decoder's first hidden layer that are positive for at least one view of these "
        "scenes (the others pass no gradient). 'matching top-1': for runs with --loss.matching, how often a patch's "
        "most similar patch in another view of a training sample is its true correspondence (chance: 1 in 144).\n\n"
    )
    text += md_table(
        [
            "run",
            "weights",
            "AbsRel",
            "decoder rot. (deg)",
            "decoder transl. (deg)",
            "decoder's relative rotation (median deg)",
            "decoder ReLUs alive (layer 1)",
            "matching top-1 (training, last 10 logs)",
            "ray-solver rot. (deg)",
            "ray-solver transl. (deg)",
            "seconds",
        ],
        finals,
    )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
