"""Rendering Gaussians: gsplat on CUDA, a differentiable torch renderer elsewhere (`render`)."""

from da3_splat.rendering.api import RenderOutput, render

__all__ = ["RenderOutput", "render"]
