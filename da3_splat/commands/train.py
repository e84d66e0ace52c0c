"""`da3-splat train PRESET [overrides]`: a named preset (shipped in ``da3_splat/configs``) or a .json file becomes
the default that command-line fields override; the run is the library's (:func:`da3_splat.train.trainer.run_train`)."""

from __future__ import annotations

from da3_splat.train.config import TrainConfig, parse_train_args


def parse(argv: list[str]) -> TrainConfig:
    return parse_train_args(argv)


def run_train(cfg: TrainConfig) -> dict:
    from da3_splat.train.trainer import run_train as train

    return train(cfg)
