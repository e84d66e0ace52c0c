"""Novel-view-synthesis samples (context views in, target views to render) over DL3DV-style scenes.

Training (:class:`NVSDataset`): an epoch has ``items_per_epoch`` items (default: one per scene). Item i of
epoch e is a pure function of (seed, e, i): the scene is ``order[i % n_scenes]`` with ``order`` a permutation
drawn from (seed, e), and its views come from :func:`~da3_splat.data.sampling.sample_training_views` with a
generator seeded by (seed, e, i). So iterate with ``shuffle=False`` (the dataset shuffles) and call
:meth:`NVSDataset.set_epoch` before each epoch: a resumed run sees the same data in the same order.

Batches: the numbers of context views S and targets T are drawn once per block of ``batch_size``
consecutive items (from (seed, e, i // batch_size)), so a ``DataLoader(ds, batch_size=ds.batch_size,
shuffle=False, collate_fn=collate)`` batch shares one S and T and :func:`collate` can stack it. Every scene
must hold the largest S plus the largest T frames.

Evaluation (:meth:`NVSDataset.for_evaluation`): one item per scene with the fixed context and targets of an
evaluation index file; the epoch plays no part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from da3_splat.data.dl3dv import Scene, load_views, read_scene
from da3_splat.data.sampling import (
    EvalViews,
    count_range,
    make_eval_index,
    parse_eval_index,
    read_eval_index,
    sample_training_views,
)
from da3_splat.errors import InputError

PATCH = 14  # DA3's patch size: image sides must be multiples of it


@dataclass
class Views:
    """One item's choice: a scene (position in the dataset) and its context and target frames (positions in
    that :class:`~da3_splat.data.dl3dv.Scene`)."""

    scene: int
    context: list[int]
    targets: list[int]


def _check_size(size) -> tuple[int, int]:
    h, w = (int(v) for v in size)
    if h < PATCH or w < PATCH or h % PATCH or w % PATCH:
        raise InputError(f"image size must be (H, W) multiples of {PATCH}, got {tuple(size)}")
    return h, w


def _read_all(scenes, downscale: int | None, min_frames: int) -> list[Scene]:
    out = [s if isinstance(s, Scene) else read_scene(s, downscale=downscale, min_frames=min_frames) for s in scenes]
    if not out:
        raise InputError("no scenes given")
    short = [s.name for s in out if len(s) < min_frames]
    if short:
        raise InputError(f"scenes {short[:3]} have fewer than the {min_frames} frames needed")
    return out


class NVSDataset(Dataset):
    """Context/target view sets over scenes, loaded as tensors at ``size`` (H, W) (resize + centre crop).

    Items are dicts: ``context_images`` (S, 3, H, W) in [0, 1], ``context_w2c`` (S, 4, 4) OpenCV
    world-to-camera, ``context_K`` (S, 3, 3) pixels of the crop, ``context_depth`` (S, H, W) when the scenes
    have depth; the same ``target_*`` for T targets; ``scene`` (name); ``context_indices`` and
    ``target_indices`` (int64 frame numbers in the scene's transforms.json). See the module docstring for how
    items are drawn.
    """

    def __init__(
        self,
        scenes: Sequence[str | Path | Scene],
        size: tuple[int, int] = (126, 224),
        num_context: int | tuple[int, int] = (2, 12),
        num_targets: int | tuple[int, int] = 4,
        window: tuple[int, int] = (16, 128),
        seed: int = 0,
        batch_size: int = 1,
        items_per_epoch: int | None = None,
        downscale: int | None = None,
        exclude_context: bool = True,
    ):
        self.size = _check_size(size)
        self.num_context = count_range(num_context, "num_context")
        self.num_targets = count_range(num_targets, "num_targets")
        if self.num_context[0] < 2 or batch_size < 1:
            raise InputError(f"need num_context >= 2 and batch_size >= 1, got {num_context}, {batch_size}")
        s_hi, t_hi = self.num_context[1], self.num_targets[1]
        need = s_hi + t_hi if exclude_context else max(s_hi, t_hi)  # so S is never lowered (batches stack)
        self.scenes = _read_all(scenes, downscale, need)
        self.window, self.seed, self.batch_size = tuple(window), int(seed), int(batch_size)
        self.items_per_epoch = len(self.scenes) if items_per_epoch is None else int(items_per_epoch)
        self.exclude_context = exclude_context
        self.epoch = 0
        self.fixed: list[Views] | None = None  # evaluation: one fixed choice per scene

    @classmethod
    def for_evaluation(
        cls,
        scenes: Sequence[str | Path | Scene],
        size: tuple[int, int] = (126, 224),
        index: str | Path | dict[str, EvalViews] | None = None,
        num_context: int | None = None,
        downscale: int | None = None,
    ) -> NVSDataset:
        """One item per scene with fixed views from ``index`` (an index file, or what
        :func:`~da3_splat.data.sampling.read_eval_index` returns; default: each scene's own eval_index.json),
        using its ``num_context``-view context (default: the only one). A scene with no index gets the DA3
        protocol computed from its cameras (``num_context`` views, default 4). Scenes have different target counts,
        so batch them one at a time unless they agree."""
        self = cls.__new__(cls)
        self.size = _check_size(size)
        self.scenes = _read_all(scenes, downscale, 2)
        self.seed, self.batch_size, self.epoch, self.items_per_epoch = 0, 1, 0, len(self.scenes)
        table = read_eval_index(index) if isinstance(index, (str, Path)) else index
        self.fixed = []
        for i, scene in enumerate(self.scenes):
            if table is not None:
                views = table.get(scene.name)
            elif scene.eval_index is not None:
                views = read_eval_index(scene).get(scene.name)
            else:  # no index anywhere: the DA3 protocol on this scene's cameras
                own = make_eval_index(scene, 4 if num_context is None else num_context)
                views = parse_eval_index(own, scene.name).get(scene.name)
            if views is None:
                raise InputError(f"the evaluation index has no entry for scene {scene.name}")
            context = scene.positions(views.context_views(num_context))
            self.fixed.append(Views(i, context, scene.positions(views.targets)))
        return self

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose items ``__getitem__`` returns (call it in the process that iterates, before
        creating the DataLoader iterator; persistent workers would keep the old epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.fixed) if self.fixed is not None else self.items_per_epoch

    def views(self, i: int) -> Views:
        """Item i's scene and frames in the current epoch, without loading anything."""
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} of a dataset of {len(self)}")
        if self.fixed is not None:
            return self.fixed[i]
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.scenes))
        scene = int(order[i % len(self.scenes)])
        # S and T per batch (so a batch stacks), everything else per item
        counts = np.random.default_rng([self.seed, self.epoch, i // self.batch_size, 1])
        S = int(counts.integers(self.num_context[0], self.num_context[1] + 1))
        T = int(counts.integers(self.num_targets[0], self.num_targets[1] + 1))
        context, targets = sample_training_views(
            len(self.scenes[scene]),
            np.random.default_rng([self.seed, self.epoch, i, 2]),
            num_context=S,
            window=self.window,
            num_targets=T,
            exclude_context=self.exclude_context,
        )
        return Views(scene, context, targets)

    def __getitem__(self, i: int) -> dict:
        v = self.views(i)
        scene = self.scenes[v.scene]
        loaded = load_views(scene, v.context + v.targets, self.size)
        S = len(v.context)
        item: dict = {}
        for part, sl in (("context", slice(0, S)), ("target", slice(S, None))):
            item[f"{part}_images"] = loaded["images"][sl]
            item[f"{part}_w2c"] = loaded["w2c"][sl]
            item[f"{part}_K"] = loaded["intrinsics"][sl]
            if "depth" in loaded:
                item[f"{part}_depth"] = loaded["depth"][sl]
        item["scene"] = scene.name
        item["context_indices"] = torch.tensor([scene.frame_ids[j] for j in v.context], dtype=torch.int64)
        item["target_indices"] = torch.tensor([scene.frame_ids[j] for j in v.targets], dtype=torch.int64)
        return item


def collate(items: list[dict]) -> dict:
    """Stack items into a batch: tensors gain a leading batch dimension, ``scene`` becomes a list of names.
    Items must share their numbers of context and target views (NVSDataset draws them per batch) and which
    keys they have."""
    keys = items[0].keys()
    if any(it.keys() != keys for it in items):
        raise ValueError("collate: items have different keys (some scenes have depth and others not?)")
    batch: dict = {}
    for key in keys:
        values = [it[key] for it in items]
        if not isinstance(values[0], torch.Tensor):
            batch[key] = values
            continue
        if any(v.shape != values[0].shape for v in values):
            shapes = sorted({tuple(v.shape) for v in values})
            raise ValueError(
                f"collate: {key} differs in shape across the batch {shapes}; a batch must share its numbers of "
                "views (use the dataset's batch_size for the DataLoader, with shuffle=False)"
            )
        batch[key] = torch.stack(values)
    return batch
