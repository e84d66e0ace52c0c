"""Datasets and scene files (nerfstudio ``transforms.json`` and friends)."""

from da3_splat.data.transforms import read_transforms, write_transforms

__all__ = ["read_transforms", "write_transforms"]
