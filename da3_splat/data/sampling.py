"""Choosing views: farthest-point view selection, random training views, evaluation index files.

numpy only (no torch), so scene-generation workers can use it.

Evaluation index files (JSON), all read by :func:`read_eval_index`. Frame numbers are positions in the
scene's ``transforms.json`` ``frames`` list (0-based), whatever frames a reader later skips.

- Per scene (``eval_index.json`` next to ``transforms.json``; mydesk and our synthetic scenes)::

      {"scene": "mydesk", "protocol": "...", "targets": [0, 8, ...], "context_12": [...], "context_32": [...]}

  ``context_N`` holds N context frames; ``scene`` and ``protocol`` are optional.
- Many scenes (ours, :func:`write_eval_index`)::

      {"format": "da3-splat-eval-index", "version": 1, "scenes": {"<name>": <a per-scene object as above>}}

- DepthSplat's view-selection files, ``{"<name>": {"context": [...], "target": [...]}}``, are read too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from da3_splat.errors import InputError

INDEX_FORMAT = "da3-splat-eval-index"
INDEX_FILE = "eval_index.json"
TARGET_EVERY = 8
DA3_PROTOCOL = (
    "every {every}th frame (index % {every} == 0) is a target; k context views chosen by farthest-point sampling "
    "on camera centre (normalised by the scene extent) and viewing direction among the others"
)


# --------------------------------------------------------------------------------------------------
# Farthest-point view selection


def _centres_and_directions(w2c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    R, t = w2c[:, :3, :3], w2c[:, :3, 3]
    centres = -np.einsum("nji,nj->ni", R, t)  # -R^T t
    return centres, R[:, 2, :]  # the camera's +z axis (viewing direction) in world coordinates


def _distances_to(centres: np.ndarray, dirs: np.ndarray, j: int, extent: float) -> np.ndarray:
    """Combined distance of every view to view j: centre distance / ``extent`` plus the angle between
    viewing directions / pi, so each term is about 0..1 across a scene."""
    cos = np.clip(dirs @ dirs[j], -1.0, 1.0)
    return np.linalg.norm(centres - centres[j], axis=1) / extent + np.arccos(cos) / np.pi


def farthest_point_views(w2c, k: int, candidates: Sequence[int] | None = None, first: int | None = None) -> list[int]:
    """k views chosen by farthest-point sampling over camera position and orientation; deterministic.

    w2c: (N, 3|4, 4) OpenCV world-to-camera. ``candidates`` (indices into w2c; default all) restricts the choice.
    Distance between two views: centre distance / extent + angle between viewing directions / pi, with the
    extent the diagonal of the candidates' centre bounding box. The first view is ``first`` (must be a
    candidate) or else the candidate farthest from the mean camera (mean centre, mean viewing direction).
    Ties go to the earlier candidate. Returns indices into ``w2c`` in the order chosen, so the first j of them
    are the answer for k = j.
    """
    w2c = np.asarray(w2c, dtype=np.float64)
    cand = np.arange(len(w2c)) if candidates is None else np.asarray(list(candidates), dtype=np.int64)
    if k < 1 or k > len(cand):
        raise InputError(f"cannot choose {k} views from {len(cand)} candidate frames")
    centres, dirs = _centres_and_directions(w2c[cand])
    extent = float(np.linalg.norm(centres.max(0) - centres.min(0)))
    extent = extent if extent > 1e-9 else 1.0  # all cameras at one point: only orientation counts
    if first is None:
        mean_dir = dirs.mean(0)
        mean_dir = mean_dir / max(np.linalg.norm(mean_dir), 1e-12)
        spread = np.linalg.norm(centres - centres.mean(0), axis=1) / extent
        spread += np.arccos(np.clip(dirs @ mean_dir, -1.0, 1.0)) / np.pi
        pos = int(spread.argmax())
    else:
        hits = np.flatnonzero(cand == first)
        if not len(hits):
            raise InputError(f"first view {first} is not among the candidate frames")
        pos = int(hits[0])
    chosen = [pos]
    dist = _distances_to(centres, dirs, pos, extent)
    while len(chosen) < k:
        dist[chosen] = -1.0  # never pick a view twice, even a duplicate camera
        pos = int(dist.argmax())
        chosen.append(pos)
        dist = np.minimum(dist, _distances_to(centres, dirs, pos, extent))
    return [int(cand[p]) for p in chosen]


# --------------------------------------------------------------------------------------------------
# Training views


def count_range(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    """A count or an inclusive (low, high) range of counts, as (low, high); InputError unless 1 <= low <= high."""
    lo, hi = (value, value) if isinstance(value, (int, np.integer)) else value
    if not 1 <= lo <= hi:
        raise InputError(f"{name} must be a positive count or an inclusive range (low, high), got {value!r}")
    return int(lo), int(hi)


def sample_training_views(
    num_frames: int,
    rng: np.random.Generator,
    num_context: int | tuple[int, int] = (2, 12),
    window: tuple[int, int] = (16, 128),
    num_targets: int | tuple[int, int] = 4,
    exclude_context: bool = True,
) -> tuple[list[int], list[int]]:
    """Random (context, targets) frame indices of a video of ``num_frames`` frames, both sorted.

    1. S context views and T targets are drawn uniformly from the inclusive ranges ``num_context`` and
       ``num_targets``, S lowered if the video is too short (never below the range's low end).
    2. A window span (last minus first frame) is drawn uniformly from the inclusive range ``window``, raised
       to the least span that fits the views and lowered to the video; its start is uniform.
    3. Context: the window's first and last frame, and the other S - 2 spread evenly: the frames strictly
       inside are cut into S - 2 equal runs, one frame drawn from each.
    4. Targets: T distinct frames drawn uniformly inside the window (first to last context frame),
       not context frames when ``exclude_context``.

    Deterministic for a given ``rng`` state. Raises InputError when the video cannot hold the views.
    """
    s_lo, s_hi = count_range(num_context, "num_context")
    t_lo, t_hi = count_range(num_targets, "num_targets")
    w_lo, w_hi = window
    if s_lo < 2 or not 1 <= w_lo <= w_hi:
        raise InputError(f"need at least 2 context views and a window range 1 <= low <= high, got {s_lo}, {window}")
    S, T = int(rng.integers(s_lo, s_hi + 1)), int(rng.integers(t_lo, t_hi + 1))
    S = min(S, num_frames - T if exclude_context else num_frames)
    if S < s_lo or T > num_frames:
        raise InputError(f"a scene of {num_frames} frames is too short for {s_lo}+ context views and {T} targets")
    need = (S + T if exclude_context else max(S, T)) - 1  # the least span (last - first frame) that fits
    span = min(max(int(rng.integers(w_lo, w_hi + 1)), need), num_frames - 1)
    start = int(rng.integers(0, num_frames - span))
    end = start + span
    runs = np.array_split(np.arange(start + 1, end), S - 2) if S > 2 else []
    context = [start, *(int(run[rng.integers(len(run))]) for run in runs), end]
    pool = np.setdiff1d(np.arange(start, end + 1), context) if exclude_context else np.arange(start, end + 1)
    targets = sorted(int(t) for t in rng.choice(pool, size=T, replace=False))
    return context, targets


# --------------------------------------------------------------------------------------------------
# Evaluation index


@dataclass
class EvalViews:
    """One scene's evaluation views, as frame numbers of its transforms.json."""

    targets: list[int]
    context: dict[int, list[int]] = field(default_factory=dict)  # number of views -> sorted frame numbers
    protocol: str = ""

    def context_views(self, num: int | None = None) -> list[int]:
        """The context list with ``num`` views (``None``: the only one there is)."""
        if num is None:
            if len(self.context) != 1:
                raise InputError(f"the evaluation index has context sets of {sorted(self.context)} views; pick one")
            return next(iter(self.context.values()))
        if num not in self.context:
            raise InputError(f"the evaluation index has no {num}-view context (it has {sorted(self.context)})")
        return self.context[num]


def eval_views_for_cameras(
    w2c, num_context: int | Sequence[int], target_every: int = TARGET_EVERY, frame_ids: Sequence[int] | None = None
) -> dict:
    """The DA3 protocol for cameras ``w2c``: targets are the frames whose number is a multiple of
    ``target_every``; for each k in ``num_context``, k context frames chosen by :func:`farthest_point_views`
    among the others. ``frame_ids`` numbers the cameras (default 0..N-1). Returns the per-scene index object
    (``{"protocol", "context_k"..., "targets"}``, frame numbers, sorted)."""
    ids = np.arange(len(w2c)) if frame_ids is None else np.asarray(list(frame_ids), dtype=np.int64)
    if target_every < 2:
        raise InputError(f"target_every must be at least 2, got {target_every}")
    is_target = ids % target_every == 0
    others = np.flatnonzero(~is_target)
    out: dict = {"protocol": DA3_PROTOCOL.format(every=target_every)}
    for k in [num_context] if isinstance(num_context, (int, np.integer)) else num_context:
        picked = farthest_point_views(w2c, int(k), candidates=others)
        out[f"context_{int(k)}"] = sorted(int(ids[p]) for p in picked)
    out["targets"] = [int(i) for i in ids[is_target]]
    return out


def make_eval_index(scene, num_context: int | Sequence[int], target_every: int = TARGET_EVERY) -> dict:
    """:func:`eval_views_for_cameras` for a :class:`~da3_splat.data.dl3dv.Scene` (its frame numbers, so
    skipped frames keep the numbering of transforms.json), with ``"scene"`` set to its name."""
    out = {"scene": scene.name}
    out.update(eval_views_for_cameras(scene.w2c, num_context, target_every, scene.frame_ids))
    return out


def write_eval_index(path, scenes: dict[str, dict]) -> Path:
    """Write many scenes' index objects (name -> :func:`make_eval_index` result) as one file, atomically."""
    from da3_splat.files import write_json

    entries = {name: {k: v for k, v in entry.items() if k != "scene"} for name, entry in sorted(scenes.items())}
    for name, entry in entries.items():
        _parse_entry(entry, f"scene {name!r}")  # refuse to write what read_eval_index would reject
    return write_json(Path(path), {"format": INDEX_FORMAT, "version": 1, "scenes": entries})


def _frames(value, where: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise InputError(f"{where} must be a list of frame numbers")
    if any(v < 0 for v in value) or len(set(value)) != len(value):
        raise InputError(f"{where} has negative or repeated frame numbers")
    return sorted(value)


def _parse_entry(entry, where: str) -> EvalViews:
    if not isinstance(entry, dict):
        raise InputError(f"{where} is not an object")
    if "target" in entry and "context" in entry:  # DepthSplat: one context list
        context = _frames(entry["context"], f"{where} 'context'")
        return EvalViews(_frames(entry["target"], f"{where} 'target'"), {len(context): context})
    if "targets" not in entry:
        raise InputError(f"{where} has no 'targets' list")
    views = EvalViews(_frames(entry["targets"], f"{where} 'targets'"), protocol=str(entry.get("protocol", "")))
    for key, value in entry.items():
        if key.startswith("context_"):
            frames = _frames(value, f"{where} {key!r}")
            if key[8:] != str(len(frames)):
                raise InputError(f"{where} {key!r} holds {len(frames)} frames")
            views.context[len(frames)] = frames
    if not views.context:
        raise InputError(f"{where} has no 'context_N' lists")
    return views


def _scene_name_for(file: Path) -> str:
    folder = file.resolve().parent
    return folder.parent.name if folder.name == "nerfstudio" else folder.name  # Benchmark: <hash>/nerfstudio/


def parse_eval_index(data, default_name: str, source: str = "evaluation index") -> dict[str, EvalViews]:
    """Scene name -> :class:`EvalViews` from a loaded index object in any of the formats above."""
    if not isinstance(data, dict):
        raise InputError(f"{source} is not a JSON object")
    if data.get("format") == INDEX_FORMAT:
        if not isinstance(data.get("scenes"), dict):
            raise InputError(f"{source} has no 'scenes' object")
        return {str(n): _parse_entry(e, f"{source} scene {n!r}") for n, e in data["scenes"].items()}
    if "targets" in data:  # one scene
        return {str(data.get("scene") or default_name): _parse_entry(data, source)}
    return {str(n): _parse_entry(e, f"{source} scene {n!r}") for n, e in data.items()}


def read_eval_index(path_or_scene) -> dict[str, EvalViews]:
    """Scene name -> :class:`EvalViews`, from an index file, a scene folder holding ``eval_index.json`` (or
    ``nerfstudio/eval_index.json``), or a :class:`~da3_splat.data.dl3dv.Scene` (its ``eval_index``)."""
    if hasattr(path_or_scene, "eval_index") and hasattr(path_or_scene, "name"):
        if path_or_scene.eval_index is None:
            raise InputError(f"scene {path_or_scene.name} has no {INDEX_FILE}")
        return parse_eval_index(path_or_scene.eval_index, path_or_scene.name, f"{path_or_scene.name}/{INDEX_FILE}")
    file = Path(path_or_scene)
    if file.is_dir():
        inside = [file / INDEX_FILE, file / "nerfstudio" / INDEX_FILE]  # a scene, a Benchmark <hash>/
        file = next((f for f in inside if f.is_file()), inside[0])
    if not file.is_file():
        raise InputError(f"evaluation index not found: {file}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read evaluation index {file}: {e}") from None
    return parse_eval_index(data, _scene_name_for(file), str(file))
