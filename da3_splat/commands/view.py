"""`da3-splat view`: the viser viewer (:mod:`da3_splat.viewer`) on a PLY, an output folder or a nerfstudio run,
or DA3 run live on a folder of images."""

from __future__ import annotations

from da3_splat.viewer import ViewConfig


def run_view(cfg: ViewConfig) -> None:
    """Serves until Ctrl-C."""
    from da3_splat.viewer.app import serve

    serve(cfg)
