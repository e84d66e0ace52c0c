"""What one DA3 forward pass returns: a typed record instead of a dict whose keys change with flags."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from da3_splat.gaussians import Gaussians


@dataclass
class DA3Output:
    """Batched outputs for B samples of S views at the network resolution (H, W). Optional fields are None
    when the model or the call does not produce them.

    Reading is also possible by name (``out["depth"]``, ``"ray" in out``, ``out.get("sky")``), as with the
    official model's dict: a field counts as present when it is not None."""

    depth: Tensor  # (B, S, H, W) planar z-depth
    reference_view: Tensor  # (B,) the view whose camera is the predicted world frame (0 when none is selected)
    depth_conf: Tensor | None = None  # (B, S, H, W), >= 1; None for mono/metric models
    ray: Tensor | None = None  # (B, S, 8H/14, 8W/14, 6): direction, camera centre (``return_rays``)
    ray_conf: Tensor | None = None  # (B, S, 8H/14, 8W/14)
    extrinsics: Tensor | None = None  # (B, S, 3, 4) world-to-camera, OpenCV (models with a camera decoder)
    intrinsics: Tensor | None = None  # (B, S, 3, 3) pixels of the network input
    sky: Tensor | None = None  # (B, S, H, W) metric/mono models
    scale_factor: Tensor | None = None  # nested models: prediction units -> metres
    # Set by the NVS head's code (da3_splat.model.nvs_head), not by the network pass itself:
    gaussians: Gaussians | None = None  # batched, in the frame of the cameras that placed them
    swept_depth: Tensor | None = None  # (B, S, H, W) plane-sweep heads: the depth the Gaussians start from
    depth_scale: Tensor | None = None  # (B,) posed depth calibration: the factor the depth was rescaled by
    # Backbone features the GS head reads (``keep_features``): list of (B, S, N, C) per output layer.
    features: list[Tensor] | None = None

    def __getitem__(self, name: str):
        value = getattr(self, name) if name in _FIELDS else None
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: str) -> bool:
        return name in _FIELDS and getattr(self, name) is not None

    def get(self, name: str, default=None):
        return getattr(self, name) if name in self else default

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def items(self) -> list[tuple[str, object]]:
        return [(k, getattr(self, k)) for k in self.keys()]


_FIELDS = frozenset(f.name for f in fields(DA3Output))
