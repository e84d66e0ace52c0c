"""Datasets and scene files: nerfstudio ``transforms.json`` I/O (``transforms``) and synthetic DL3DV-style
scenes (``synthetic``). Submodules are imported directly so that light users (scene-generation workers) do not
pay for torch."""
