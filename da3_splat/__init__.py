"""da3-splat: photos to 3D Gaussian Splatting with Depth Anything 3 as the geometry backbone."""

__version__ = "0.1.0"
# The model shipped in da3_splat/weights/ (trained here; `make tiny-model`): the offline default of the demo,
# `da3-splat eval` and the nerfstudio method.
BUNDLED_MODEL = "da3-tiny-synthetic"


def __getattr__(name):
    # Lazy so that `import da3_splat` stays cheap for the CLI and the nerfstudio plugin.
    if name == "DA3":
        from da3_splat.model import DA3

        return DA3
    if name == "Prediction":
        from da3_splat.model.prediction import Prediction

        return Prediction
    raise AttributeError(name)


__all__ = ["BUNDLED_MODEL", "DA3", "Prediction", "__version__"]
