"""Geometry and camera metrics: depth AbsRel / delta<1.25 and pairwise relative pose errors with AUC.

Depth is scored after one median scale per scene (all views share it, so the metric also sees whether the views
agree in scale). Poses are scored as the DA3 and VGGT papers do: for every pair of views (i, j), the angle of the
relative rotation error and the angle between the predicted and true relative translation directions; both are
invariant to the world frame and to scale, so no alignment is needed. The translation angle is not folded
(a camera moving backwards instead of forwards scores 180 degrees, not 0). AUC@T is the area under the accuracy
curve of ``max(rotation, translation)`` error up to T degrees, divided by T: the exact integral, equal to the mean
of ``max(0, 1 - err / T)`` over pairs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from da3_splat.geometry import as_homogeneous, rigid_inverse

AUC_THRESHOLDS = (3.0, 5.0, 15.0)
DELTA_THRESHOLD = 1.25
ZERO_TRANSLATION = 1e-9  # a relative translation shorter than this has no direction


@dataclass
class DepthScores:
    abs_rel: float
    delta1: float  # fraction of valid pixels with max(pred/gt, gt/pred) < 1.25
    abs_rel_constant: float  # AbsRel of the GT median everywhere: what a model that knows nothing reaches

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def depth_scores(pred: Tensor, gt: Tensor, valid: Tensor | None = None) -> DepthScores:
    """Median-aligned depth metrics of ``pred`` against ``gt`` (any matching shapes; one scale for all of it)."""
    ok = torch.isfinite(gt) & (gt > 0) & torch.isfinite(pred)
    if valid is not None:
        ok = ok & valid.bool()
    p, g = pred[ok].double(), gt[ok].double()
    if g.numel() == 0:
        nan = float("nan")
        return DepthScores(nan, nan, nan)
    p = p * (g.median() / p.median().clamp(min=1e-12))
    p = p.clamp(min=1e-12)
    ratio = torch.maximum(p / g, g / p)
    const = (g.median() - g).abs() / g
    return DepthScores(
        abs_rel=float(((p - g).abs() / g).mean()),
        delta1=float((ratio < DELTA_THRESHOLD).double().mean()),
        abs_rel_constant=float(const.mean()),
    )


def _angle_deg(sin: Tensor, cos: Tensor) -> Tensor:
    """Angle from (unnormalised) sine and cosine; atan2 keeps it accurate near 0 and 180 degrees, where acos is not."""
    return torch.rad2deg(torch.atan2(sin, cos))


def relative_pose_errors(pred_w2c: Tensor, gt_w2c: Tensor) -> tuple[Tensor, Tensor]:
    """Rotation and translation-direction errors (degrees) of every pair i < j of S views.

    pred_w2c, gt_w2c: (S, 3|4, 4) world-to-camera. Returns two (S (S - 1) / 2,) float64 tensors. A pair whose
    true or predicted relative translation is zero gets a translation error of 90 degrees (direction unknown).
    """
    pred, gt = as_homogeneous(pred_w2c.double()), as_homogeneous(gt_w2c.double())
    S = pred.shape[0]
    i, j = torch.triu_indices(S, S, offset=1, device=pred.device)
    rel_p = pred[j] @ rigid_inverse(pred[i])  # camera i's frame -> camera j's frame
    rel_g = gt[j] @ rigid_inverse(gt[i])
    dR = rel_p[:, :3, :3].transpose(-1, -2) @ rel_g[:, :3, :3]
    # 2 sin(angle) is the norm of the axis vector of dR - dR^T, 2 cos(angle) is trace(dR) - 1.
    axis = torch.stack([dR[:, 2, 1] - dR[:, 1, 2], dR[:, 0, 2] - dR[:, 2, 0], dR[:, 1, 0] - dR[:, 0, 1]], dim=-1)
    rot = _angle_deg(axis.norm(dim=-1), dR.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0)
    tp, tg = rel_p[:, :3, 3], rel_g[:, :3, 3]
    known = (tp.norm(dim=-1) > ZERO_TRANSLATION) & (tg.norm(dim=-1) > ZERO_TRANSLATION)
    trans = _angle_deg(torch.linalg.cross(tp, tg).norm(dim=-1), (tp * tg).sum(-1))
    return rot, torch.where(known, trans, torch.full_like(trans, 90.0))


def pose_auc(rot_err: Tensor, trans_err: Tensor, threshold: float) -> float:
    """Area under the accuracy-vs-threshold curve of ``max(rot, trans)`` up to ``threshold`` degrees, in [0, 1]."""
    err = torch.maximum(torch.as_tensor(rot_err), torch.as_tensor(trans_err)).double()
    if err.numel() == 0:
        return float("nan")
    return float((1.0 - err / threshold).clamp(min=0.0).mean())


@dataclass
class PoseScores:
    rotation_median: float  # degrees, median over pairs
    translation_median: float  # degrees
    auc3: float
    auc5: float
    auc15: float
    pairs: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _median(x: Tensor) -> float:
    """The median (mean of the two middle values for an even count; torch's ``median`` returns the lower one)."""
    return float(torch.quantile(x, 0.5))


def pose_scores(rot_err: Tensor, trans_err: Tensor) -> PoseScores:
    """Summary of pairwise errors (concatenate the pairs of several scenes first to pool them)."""
    rot_err, trans_err = torch.as_tensor(rot_err).double(), torch.as_tensor(trans_err).double()
    if rot_err.numel() == 0:
        nan = float("nan")
        return PoseScores(nan, nan, nan, nan, nan, 0)
    a3, a5, a15 = (pose_auc(rot_err, trans_err, t) for t in AUC_THRESHOLDS)
    return PoseScores(
        rotation_median=_median(rot_err),
        translation_median=_median(trans_err),
        auc3=a3,
        auc5=a5,
        auc15=a15,
        pairs=int(rot_err.numel()),
    )


def finite_or_none(x: float | None) -> float | None:
    """JSON-friendly: NaN and +-inf become None (``json`` would write NaN / Infinity, which is not JSON)."""
    return None if x is None or not math.isfinite(x) else x
