"""da3-splat: photos to 3D Gaussian Splatting with Depth Anything 3 as the geometry backbone.

The public API (everything else is internal and may change)::

    DA3                        the model: DA3.from_pretrained(src), model.infer(images, ...) -> Prediction
    Prediction                 per-view depth, confidence, cameras (and Gaussians) of one inference
    gaussians_from_prediction  Prediction -> Gaussians (the GS head's, or one per pixel from depth)
    Gaussians                  means, wxyz quaternions, scales, opacities, SH coefficients
    render                     Gaussians + cameras -> images (gsplat on CUDA, the pure-torch renderer on CPU)
    read_ply, write_ply        the 3DGS PLY format of the splat viewers
    Camera conventions: world-to-camera OpenCV (x right, y down, z forward) everywhere;
    opencv_w2c_to_opengl_c2w / opengl_c2w_to_opencv_w2c convert to and from nerfstudio's camera-to-world OpenGL.
"""

__version__ = "0.1.0"
# The model shipped in da3_splat/weights/ (trained here; `make tiny-model`): the offline default of the demo,
# `da3-splat eval` and the nerfstudio method.
BUNDLED_MODEL = "da3-tiny-synthetic"

# name -> module; imported on first use so that `import da3_splat` stays cheap for the CLI and the plugin.
_LAZY = {
    "DA3": "da3_splat.model",
    "Prediction": "da3_splat.model.inference",
    "gaussians_from_prediction": "da3_splat.build",
    "Gaussians": "da3_splat.gaussians",
    "render": "da3_splat.rendering",
    "read_ply": "da3_splat.ply",
    "write_ply": "da3_splat.ply",
    "opencv_w2c_to_opengl_c2w": "da3_splat.geometry",
    "opengl_c2w_to_opencv_w2c": "da3_splat.geometry",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'da3_splat' has no attribute {name!r}")


__all__ = ["BUNDLED_MODEL", "__version__", *_LAZY]
