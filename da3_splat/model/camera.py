"""Camera encoder (pose conditioning) and camera decoder (pose from the camera token)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from da3_splat.geometry import cameras_to_pose_encoding, pose_encoding_to_cameras, rigid_inverse
from da3_splat.model.vit import Block, Mlp


class CameraEncoder(nn.Module):
    """Known cameras -> one token per view that replaces the camera token in the backbone.

    Input w2c must already be normalised (``geometry.normalize_extrinsics``): first view identity, median
    camera distance 1.
    """

    def __init__(self, dim: int, depth: int = 4, num_heads: int = 16):
        super().__init__()
        self.pose_branch = Mlp(9, dim // 2, dim)
        self.token_norm = nn.LayerNorm(dim)
        self.trunk = nn.Sequential(*(Block(dim, num_heads, 4 * dim, eps=1e-5, ls_init=0.01) for _ in range(depth)))
        self.trunk_norm = nn.LayerNorm(dim)

    def forward(self, w2c: Tensor, K: Tensor, height: int, width: int) -> Tensor:
        enc = cameras_to_pose_encoding(rigid_inverse(w2c.float()), K.float(), height, width)
        return self.trunk_norm(self.trunk(self.token_norm(self.pose_branch(enc))))


class CameraDecoder(nn.Module):
    """Raw camera token of the last out layer -> [t, q_xyzw, fov_h, fov_w] (camera-to-world)."""

    def __init__(self, dim_in: int, normalize_token: bool = False):
        super().__init__()
        self.normalize_token = normalize_token  # DA3Config.camera_token_norm
        self.backbone = nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(), nn.Linear(dim_in, dim_in), nn.ReLU())
        self.fc_t = nn.Linear(dim_in, 3)
        self.fc_qvec = nn.Linear(dim_in, 4)
        self.fc_fov = nn.Sequential(nn.Linear(dim_in, 2), nn.ReLU())

    def forward(self, token: Tensor) -> Tensor:
        if self.normalize_token:
            token = F.layer_norm(token, token.shape[-1:])
        h = self.backbone(token)
        return torch.cat([self.fc_t(h), self.fc_qvec(h), self.fc_fov(h)], dim=-1)

    def cameras(self, token: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
        """-> (w2c (B, S, 3, 4), K (B, S, 3, 3) in pixels of the network input)."""
        c2w, K = pose_encoding_to_cameras(self(token), height, width)
        return rigid_inverse(c2w), K
