"""Where a geometry model's camera and depth errors come from (issue 16): the same validation scores on scenes it
trained on and on held-out scenes, beside two baselines that need no model: a constant depth (AbsRel against the
GT median) and identity relative rotations (the median GT rotation between the context views).

    python benchmarks/geometry_gap.py outputs/tiny-geometry/model --train data/synthetic/train \
        --val data/synthetic/val [--scenes 8] [--out benchmarks/results/geometry_gap.md]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, machine_header, md_table  # benchmarks/ is on sys.path as the script's folder

from da3_splat.data.dataset import NVSDataset
from da3_splat.data.dl3dv import scene_list
from da3_splat.runtime import load_model
from da3_splat.train.validation import validate


def identity_rotation_error(data) -> float:
    """Median angle of the GT relative rotations between the context views: a model that predicts no rotation
    between any two views scores exactly this."""
    angles = []
    for i in range(len(data)):
        w2c = data[i]["context_w2c"].double()
        R = w2c[:, :3, :3]
        for a in range(len(R)):
            for b in range(a + 1, len(R)):
                cos = ((torch.trace(R[a] @ R[b].T) - 1) / 2).clamp(-1, 1)
                angles.append(float(torch.rad2deg(torch.arccos(cos))))
    return float(np.median(angles))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--train", type=Path, required=True)
    p.add_argument("--val", type=Path, required=True)
    p.add_argument("--scenes", type=int, default=8)
    p.add_argument("--out", type=Path, default=RESULTS / "geometry_gap.md")
    p.add_argument("--note", action="append", default=[], help="a line for the header (how the model was trained)")
    a = p.parse_args()
    torch.manual_seed(0)
    model = load_model(a.model, "cpu").eval()
    size = (126, 224)
    rows = []
    for name, root in (("trained on", a.train), ("held out", a.val)):
        data = NVSDataset.for_evaluation(scene_list([root])[: a.scenes], size=size, num_context=4, downscale=4)
        t0 = time.perf_counter()
        s = validate(model, data, "cpu")
        rows.append(
            [
                f"{name} ({root}, first {a.scenes})",
                f"{s['val/depth_abs_rel_pose_free']:.3f}",
                f"{s['val/rotation_median']:.2f}",
                f"{identity_rotation_error(data):.2f}",
                f"{s['val/translation_median']:.2f}",
                f"{s['val/pose_auc15']:.3f}",
                f"{time.perf_counter() - t0:.0f}",
            ]
        )
    head = ["scenes", "AbsRel (pose-free)", "rot. err. median (deg)", "identity-rotation baseline (deg)"]
    head += ["transl. dir. err. median (deg)", "AUC@15", "seconds"]
    extra = [f"- model: {a.model}; 4 context views per scene (each scene's eval_index.json), {size[0]}x{size[1]}"]
    extra += [*(f"- {line}" for line in a.note), ""]
    text = machine_header("Geometry on training vs held-out scenes (issue 16)", extra)
    text += md_table(head, rows)
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
