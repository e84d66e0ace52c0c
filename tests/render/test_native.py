"""The compiled compositor (`rendering/composite.c`, built by `native.py`): the forward-only path's default where a
C compiler is found. It must give what the brute force, the torch compositor and the differentiable path give,
build once per source into its cache, and fall back to torch (with one warning) where it cannot be built. (The
tile-edge and early-stop cases run for both compositors in test_fast.py.)

A machine without a C compiler fails these tests instead of skipping them: `make test` must check the path
that previews and viewers take."""

import warnings

import torch

from da3_splat.rendering import fast_composite, native, render
from tests.render.test_fast import both_paths, native_composite
from tests.render.test_render import H, W, cameras, composite_brute, random_gaussians


def test_builds_once_per_source_into_its_cache(tmp_path, monkeypatch):
    lib = native.build(tmp_path)
    assert lib.parent == tmp_path and lib.suffix == ".so" and lib.stat().st_size > 0
    mtime = lib.stat().st_mtime_ns
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))  # a second build would fail: it must not run
    assert native.build(tmp_path) == lib and lib.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [lib.name]  # no temporary files left behind


def test_random_scenes_match_brute_force_and_torch_compositor():
    """Several cameras, image sizes that are not whole tiles, float32 and float64."""
    for dtype, atol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        gen = torch.Generator().manual_seed(4)
        C, N, width, height = 2, 120, 53, 37
        means2d = (torch.rand(C, N, 2, generator=gen, dtype=dtype) * 1.2 - 0.1) * torch.tensor([width, height])
        angle = torch.rand(C, N, generator=gen, dtype=dtype) * 3.14
        c, s = torch.cos(angle), torch.sin(angle)
        l0, l1 = 0.02 + 0.5 * torch.rand(2, C, N, generator=gen, dtype=dtype)
        conics = torch.stack([l0 * c * c + l1 * s * s, (l0 - l1) * c * s, l0 * s * s + l1 * c * c], -1)
        colors = torch.rand(C, N, 4, generator=gen, dtype=dtype)
        opacities = torch.rand(C, N, generator=gen, dtype=dtype)
        radii = (3.0 / torch.minimum(l0, l1).sqrt()).ceil().int()
        radii[:, :5] = 0  # culled
        depths = torch.rand(C, N, generator=gen, dtype=dtype)
        args = (means2d, conics, colors, opacities, radii, depths, width, height)
        got = native_composite(*args)
        assert 0.3 < got[1].mean() < 0.999
        for want in (composite_brute(*args), fast_composite.composite(*args)):
            for x, y in zip(got, want):
                assert x.dtype == dtype
                torch.testing.assert_close(x, y, atol=atol, rtol=0)


def test_render_defaults_to_it_and_matches_the_differentiable_path(monkeypatch):
    calls = []
    real = native.composite_visible
    monkeypatch.setattr(native, "composite_visible", lambda *a: calls.append(1) or real(*a))
    g = random_gaussians(3000, seed=2, sh_degree=1)
    g.scales = g.scales * 0.5
    viewmats, Ks = cameras(2, width=96, height=64, focal=70.0)
    fast_out, diff_out = both_paths(g, viewmats, Ks, 96, 64, sh_degree=1, mode="RGB+ED")
    assert calls and fast_out.alpha.mean() > 0.5
    for name in ("colors", "depth", "alpha"):
        torch.testing.assert_close(getattr(fast_out, name), getattr(diff_out, name).detach(), atol=1e-5, rtol=0)


def test_thread_count_does_not_change_the_image():
    g = random_gaussians(2000, seed=6, dtype=torch.float64)
    viewmats, Ks = cameras(3, dtype=torch.float64)
    threads = torch.get_num_threads()
    images = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            with torch.no_grad():
                images.append(render(g, viewmats, Ks, W, H, mode="RGB+D"))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(images[0].colors, images[1].colors) and torch.equal(images[0].alpha, images[1].alpha)


def test_without_a_compiler_render_falls_back_to_torch_with_one_warning(tmp_path, monkeypatch):
    g = random_gaussians(300, seed=3, dtype=torch.float64)
    viewmats, Ks = cameras(2, dtype=torch.float64)
    with torch.no_grad():
        want = render(g, viewmats, Ks, W, H, mode="RGB")
    monkeypatch.setenv("DA3_SPLAT_CACHE", str(tmp_path))  # nothing cached there
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    native.library.cache_clear()
    try:
        with torch.no_grad(), warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            got = render(g, viewmats, Ks, W, H, mode="RGB")
            render(g, viewmats, Ks, W, H, mode="RGB")
        messages = [str(w.message) for w in seen if "compiled renderer" in str(w.message)]
        assert len(messages) == 1 and "no-such-compiler" in messages[0], messages
        assert native.library() is None
    finally:
        native.library.cache_clear()
    torch.testing.assert_close(got.colors, want.colors, atol=1e-12, rtol=0)
    monkeypatch.setenv("DA3_SPLAT_NATIVE", "0")  # switched off: the torch path, no build attempted
    empty = (torch.zeros(0, dtype=torch.int64),) * 2 + (torch.zeros(1, 0, 2), torch.zeros(1, 0, 3), torch.zeros(1, 0))
    assert native.composite_visible(*empty, torch.zeros(1, 0, dtype=torch.int32), torch.zeros(3, 0), W, H) is None


def test_an_unwritable_cache_falls_back_to_the_temporary_folder(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("DA3_SPLAT_CACHE", str(tmp_path / "file" / "cache"))  # cannot be created
    monkeypatch.setattr(native.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    lib = native.build()
    assert lib.parent.parent == tmp_path / "tmp" and lib.is_file()
    assert native.build() == lib  # found there next time, not rebuilt
