"""`da3-splat view`: loading every kind of PATH, the selection (thresholds, budget, save), the command line,
and the fixtures test_viewer_server.py shares (the served viewer and the headless-Chromium screenshot).

Test scenes come from the synthetic renderer's exact depth and cameras (no model run), written with the
package's own writers, so they have the layout of real `predict` / `splat` outputs and real geometry to look at.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from da3_splat.build import gaussians_from_prediction
from da3_splat.data.synthetic import SyntheticConfig, render_scene
from da3_splat.data.transforms import write_transforms
from da3_splat.errors import InputError
from da3_splat.export import write_prediction
from da3_splat.files import write_png
from da3_splat.gaussians import Gaussians
from da3_splat.model.inference import Prediction
from da3_splat.ply import read_ply, write_ply
from da3_splat.reduce import reduce_to_budget
from da3_splat.viewer.loading import load_scene
from da3_splat.viewer.selection import SelectionParams, Selector, display_covariances, save_selection
from tests.cli_helpers import assert_user_error, run_cli

H, W, S = 48, 80, 4
NAMES = [f"v{i}" for i in range(S)]


# --------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("viewer")


@pytest.fixture(scope="module")
def pred():
    """Exact depth and cameras of a synthetic room; confidence varies so that percentiles select."""
    scene = render_scene(SyntheticConfig(frames=S, height=H, width=W), seed=3)
    conf = (1.0 + 4.0 * np.random.default_rng(0).random(scene.depth.shape)).astype(np.float32)
    return Prediction(scene.depth, conf, scene.images, scene.w2c[:, :3].astype(np.float32), scene.K.astype(np.float32))


@pytest.fixture(scope="module")
def gaussians(pred):
    return gaussians_from_prediction(pred, None, 0.0)[0]


@pytest.fixture(scope="module")
def predict_dir(root, pred):
    out = root / "predict"
    write_prediction(pred, out, NAMES)
    return out


@pytest.fixture(scope="module")
def splat_dir(root, pred, gaussians):
    """The layout of `da3-splat splat`: splat.ply, images/, transforms.json."""
    out = root / "splat"
    write_ply(out / "splat.ply", gaussians)
    for name, image in zip(NAMES, pred.processed_images):
        write_png(out / "images" / f"{name}.png", image)
    write_transforms(
        out / "transforms.json", [f"images/{n}.png" for n in NAMES], pred.extrinsics, pred.intrinsics, [(H, W)] * S
    )
    return out


# A trimmed nerfstudio 1.1.5 config.yml, as `yaml.dump(TrainerConfig)` writes it (python tags included).
NS_CONFIG = """\
!!python/object:nerfstudio.engine.trainer.TrainerConfig
_target: !!python/name:nerfstudio.engine.trainer.Trainer ''
data: !!python/object/apply:pathlib.PosixPath
- scenes
- splat
experiment_name: splat
method_name: da3-splat
output_dir: !!python/object/apply:pathlib.PosixPath
- outputs
pipeline: !!python/object:nerfstudio.pipelines.base_pipeline.VanillaPipelineConfig
  _target: !!python/name:nerfstudio.pipelines.base_pipeline.VanillaPipeline ''
  datamanager: !!python/object:nerfstudio.data.datamanagers.full_images_datamanager.FullImageDatamanagerConfig
    data: !!python/object/apply:pathlib.PosixPath
    - scenes
    - splat
    dataparser: !!python/object:nerfstudio.data.dataparsers.nerfstudio_dataparser.NerfstudioDataParserConfig
      data: !!python/object/apply:pathlib.PosixPath []
      downscale_factor: null
      scale_factor: 1.0
relative_model_dir: !!python/object/apply:pathlib.PosixPath
- nerfstudio_models
timestamp: 2025-01-01_000000
"""


def _ckpt(g: Gaussians, step: int) -> dict:
    """What nerfstudio's Trainer saves, with splatfacto's parameters (``_model.gauss_params.*``); SH degree >= 1
    (degree 0 stores colours differently, see test_checkpoint_with_sh_degree_0)."""
    assert g.sh_degree > 0
    params = g.to_splatfacto_params()
    pipeline = {f"_model.gauss_params.{k}": v.clone() for k, v in params.items()}
    pipeline["_model.some_buffer"] = torch.zeros(2)
    return {"step": step, "pipeline": pipeline, "optimizers": {"means": {"state": {}, "param_groups": []}}}


@pytest.fixture(scope="module")
def ns_run(root, splat_dir, gaussians):
    """<root>/ns/outputs/splat/da3-splat/<timestamp>/ trained on <root>/ns/scenes/splat; two checkpoints."""
    base = root / "ns"
    shutil.copytree(splat_dir, base / "scenes" / "splat")
    run = base / "outputs" / "splat" / "da3-splat" / "2025-01-01_000000"
    (run / "nerfstudio_models").mkdir(parents=True)
    (run / "config.yml").write_text(NS_CONFIG)
    c, s = np.cos(0.3), np.sin(0.3)
    transform = [[c, -s, 0.0, 0.1], [s, c, 0.0, -0.2], [0.0, 0.0, 1.0, 0.3]]
    (run / "dataparser_transforms.json").write_text(json.dumps({"transform": transform, "scale": 0.5}))
    g = gaussians.with_sh_degree(1)
    torch.save(_ckpt(g[:100], 50), run / "nerfstudio_models" / "step-000000050.ckpt")
    torch.save(_ckpt(g, 1000), run / "nerfstudio_models" / "step-000001000.ckpt")
    return run


def _assert_same_gaussians(a: Gaussians, b: Gaussians, atol=1e-5):
    assert a.num_gaussians == b.num_gaussians
    for name in ("means", "scales", "opacities", "sh"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=atol, rtol=1e-4)
    # Covariances, not quaternions: an isotropic Gaussian's rotation is arbitrary (merging picks any).
    ca, cb = a.covariances().double(), b.covariances().double()
    torch.testing.assert_close(ca, cb, atol=1e-4 * float(cb.abs().max()), rtol=1e-3)


# --------------------------------------------------------------------------------------------------
# Loading each kind of PATH


def test_load_splat_folder(splat_dir, pred, gaussians):
    scene = load_scene(splat_dir, thumbnail_size=32)
    _assert_same_gaussians(scene.gaussians, gaussians)
    assert scene.prediction is None and scene.points is None and scene.save_dir == splat_dir
    assert [c.name for c in scene.cameras] == NAMES
    for cam, w2c, K in zip(scene.cameras, pred.extrinsics, pred.intrinsics):
        np.testing.assert_allclose(np.linalg.inv(cam.c2w)[:3], w2c, atol=1e-5)
        np.testing.assert_allclose(cam.K, K, rtol=1e-6)
        assert cam.size == (H, W) and max(cam.image.shape[:2]) == 32 and cam.image.dtype == np.uint8
        assert cam.fov_y == pytest.approx(2 * np.arctan(H / 2 / K[1, 1]))
    # The synthetic rooms are y-up; every camera's -y axis points roughly up.
    assert scene.up_direction() @ np.array([0.0, 1.0, 0.0]) > 0.9


def test_load_predict_folder(predict_dir, pred):
    scene = load_scene(predict_dir)
    assert scene.gaussians is None and scene.has_confidence
    np.testing.assert_array_equal(scene.prediction.depth, pred.depth)
    np.testing.assert_array_equal(scene.prediction.depth_conf, pred.depth_conf)
    np.testing.assert_array_equal(scene.prediction.processed_images, pred.processed_images)
    np.testing.assert_allclose(scene.prediction.extrinsics, pred.extrinsics, atol=1e-6)
    assert scene.points.shape[1] == 3 and scene.point_colors.dtype == np.uint8 and len(scene.points) > 1000
    assert len(scene.cameras) == S


def test_load_ply_files(splat_dir, predict_dir, gaussians, tmp_path):
    scene = load_scene(splat_dir / "splat.ply")
    _assert_same_gaussians(scene.gaussians, gaussians)
    assert len(scene.cameras) == S  # transforms.json next to the PLY

    points = load_scene(predict_dir / "points.ply")  # a plain coloured point cloud
    assert points.gaussians is None and len(points.points) > 1000 and not Selector(points).available

    lone = tmp_path / "lone.ply"
    write_ply(lone, gaussians[:10])
    assert load_scene(lone).cameras == []
    np.testing.assert_array_equal(load_scene(lone).up_direction(), [0.0, -1.0, 0.0])  # OpenCV world: y down
    text = lone.read_bytes().replace(b"comment da3-splat", b"comment Vertical Axis: z")
    (tmp_path / "ns_export.ply").write_bytes(text)  # nerfstudio's exporter header: z-up
    np.testing.assert_array_equal(load_scene(tmp_path / "ns_export.ply").up_direction(), [0.0, 0.0, 1.0])


def test_load_nerfstudio_run(ns_run, root, gaussians, pred):
    for path in (
        ns_run,
        ns_run / "config.yml",
        ns_run / "nerfstudio_models" / "step-000001000.ckpt",
        root / "ns" / "outputs",
    ):
        scene = load_scene(path)
        # The newest checkpoint (step 1000: all Gaussians), not step 50 (100 of them).
        _assert_same_gaussians(scene.gaussians, gaussians.with_sh_degree(1))
        assert scene.save_dir == ns_run and "step-000001000.ckpt" in scene.title
    # Cameras: the dataset's (found relative to the folder above outputs/), moved like nerfstudio moves them.
    meta = json.loads((ns_run / "dataparser_transforms.json").read_text())
    T = np.vstack([np.asarray(meta["transform"]), [0, 0, 0, 1]])
    assert len(scene.cameras) == S
    for cam, w2c in zip(scene.cameras, pred.extrinsics):
        expected = T @ np.linalg.inv(np.vstack([w2c, [0, 0, 0, 1]]))
        expected[:3, 3] *= meta["scale"]
        np.testing.assert_allclose(cam.c2w, expected, atol=1e-5)
        assert cam.image is not None


def test_checkpoint_with_sh_degree_0(tmp_path, gaussians):
    """splatfacto with sh_degree 0 stores logit(rgb) as features_dc and an empty features_rest."""
    from da3_splat.sh import SH2RGB
    from da3_splat.viewer.nerfstudio_run import gaussians_from_checkpoint

    g = gaussians[:50].with_sh_degree(1)
    rgb = SH2RGB(g.sh[:, 0]).clamp(0.05, 0.95)
    ckpt = _ckpt(g, 1)
    ckpt["pipeline"]["_model.gauss_params.features_dc"] = torch.logit(rgb)
    ckpt["pipeline"]["_model.gauss_params.features_rest"] = torch.zeros(50, 0, 3)
    torch.save(ckpt, tmp_path / "a.ckpt")
    out = gaussians_from_checkpoint(tmp_path / "a.ckpt")
    torch.testing.assert_close(SH2RGB(out.sh[:, 0]), rgb, atol=1e-5, rtol=0)


def test_load_errors(tmp_path, ns_run):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a splat PLY, a da3-splat output folder"):
        load_scene(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="expected a .ply"):
        load_scene(tmp_path / "notes.txt")
    (tmp_path / "bad.ply").write_bytes(b"not a ply")
    with pytest.raises(InputError, match="bad.ply"):
        load_scene(tmp_path / "bad.ply")
    run = tmp_path / "run"
    shutil.copytree(ns_run, run)
    torch.save({"step": 1, "pipeline": {"_model.field.weight": torch.zeros(1)}}, run / "nerfstudio_models" / "z.ckpt")
    for ckpt in (run / "nerfstudio_models").glob("step-*"):
        ckpt.unlink()
    with pytest.raises(InputError, match="no Gaussians in the pipeline state"):
        load_scene(run)
    (run / "nerfstudio_models" / "z.ckpt").unlink()
    with pytest.raises(InputError, match="no checkpoint"):
        load_scene(run)


# --------------------------------------------------------------------------------------------------
# Selection: thresholds, budget, saving


def test_selection_thresholds_and_budget(splat_dir, gaussians):
    selector = Selector(load_scene(splat_dir))
    everything = selector.select(SelectionParams(max_gaussians=10**9))
    _assert_same_gaussians(everything, gaussians)
    opaque = selector.select(SelectionParams(max_gaussians=10**9, min_opacity=0.5))
    assert 0 < opaque.num_gaussians < gaussians.num_gaussians and (opaque.opacities >= 0.5).all()
    assert opaque.num_gaussians == int((gaussians.opacities >= 0.5).sum())
    small = selector.select(SelectionParams(max_gaussians=2000, min_opacity=0.5))
    expected = reduce_to_budget(gaussians, max_gaussians=2000, min_opacity=0.5)
    assert 1000 < small.num_gaussians <= 2000
    _assert_same_gaussians(small, expected)


def test_selection_from_depth_uses_confidence(predict_dir, pred):
    selector = Selector(load_scene(predict_dir))
    counts = [selector.select(SelectionParams(10**9, conf_percentile=p)).num_gaussians for p in (0.0, 50.0, 90.0)]
    assert counts[0] > counts[1] > counts[2] > 0
    # Same Gaussians as `da3-splat splat` builds from this prediction with the same settings.
    _assert_same_gaussians(
        selector.select(SelectionParams(3000, conf_percentile=50.0)), gaussians_from_prediction(pred, 3000, 50.0)[0]
    )


def test_save_never_overwrites(tmp_path, gaussians):
    g = gaussians[:200]
    first = save_selection(g, tmp_path)
    before = first.read_bytes()
    second = save_selection(g[:20], tmp_path)
    assert first.name == "selection.ply" and second.name == "selection_1.ply"
    assert first.read_bytes() == before
    _assert_same_gaussians(read_ply(second), g[:20])
    # Typed names cannot leave the save folder.
    assert save_selection(g, tmp_path, "../../escape").parent == tmp_path
    assert save_selection(g, tmp_path, "sub/dir/name.PLY").name == "name.PLY"
    # A fully opaque Gaussian (a saturated checkpoint sigmoid) still gets a finite logit.
    solid = Gaussians(g.means, g.quats, g.scales, torch.ones_like(g.opacities), g.sh)
    assert torch.isfinite(read_ply(save_selection(solid, tmp_path, "solid")).opacities).all()
    with pytest.raises(InputError, match="selection is empty"):
        save_selection(g[:0], tmp_path)


def test_display_covariances_are_positive_definite(gaussians):
    """Flat merged Gaussians (one scale ~1e-9) broke viser's Cholesky with float32 covariances."""
    g = gaussians[:500].clone()
    g.scales[:, 2] = 1e-9
    cov = display_covariances(g, scale=3.0, min_sigma=2e-4)
    np.linalg.cholesky(cov)  # raises when not positive definite
    np.testing.assert_allclose(np.linalg.eigvalsh(cov).min(1), (2e-4) ** 2, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Command line


def test_cli_help_and_errors(tmp_path):
    """The real entry point once (help, and one error's exit status), the other errors in-process."""
    res = run_cli("view", "--help")
    assert res.returncode == 0
    for option in ("PATH", "--images", "--model", "--host", "--port", "--max-gaussians", "--save-dir"):
        assert option in res.stdout
    assert_user_error(run_cli("view", tmp_path), "not a splat PLY")


@pytest.mark.parametrize(
    "args, match",
    [
        ((), "give either PATH"),
        (("{tmp}", "--images", "{tmp}"), "give either PATH"),
        (("{tmp}/missing",), "not found"),
        (("{tmp}", "--port", "70000"), "--port"),
        (("{tmp}", "--max-gaussians", "0"), "--max-gaussians"),
        (("--images", "{tmp}"), "no images"),  # checked before the model loads
    ],
)
def test_cli_user_errors(tmp_path, capsys, args, match):
    from da3_splat.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["view", *(a.format(tmp=tmp_path) for a in args)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and len(err) == 1 and err[0].startswith("error: ") and match in err[0], err


def test_missing_viser_is_a_user_error(monkeypatch):
    import sys

    from da3_splat.viewer.display import import_viser

    monkeypatch.setitem(sys.modules, "viser", None)  # makes `import viser` raise ImportError
    with pytest.raises(InputError, match=r'pip install -e "\.\[viewer\]"'):
        import_viser()
