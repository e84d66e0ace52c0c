"""Tests for da3_splat.train.checkpoint (exact resume, damage detection, pruning, atomicity) and the
warmup-cosine schedule."""

from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from da3_splat.errors import InputError
from da3_splat.train import checkpoint as ckpt_mod
from da3_splat.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from da3_splat.train.schedule import WarmupCosine, warmup_cosine

TOTAL, HALF = 10, 5


def _build(init_seed: int):
    torch.manual_seed(init_seed)
    model = nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05, betas=(0.9, 0.99))
    return model, opt, warmup_cosine(opt, warmup_steps=3, total_steps=TOTAL)


def _train(model, opt, sched, gen: torch.Generator, steps: int) -> None:
    for _ in range(steps):
        x = torch.randn(8, 4, generator=gen)
        y = torch.randn(8, 3, generator=gen)
        # Global RNGs (torch, numpy, python) also feed the step, so restore_rng matters.
        jitter = 1.0 + 1e-3 * (float(torch.rand(())) + float(np.random.rand()) + random.random())
        loss = jitter * ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _seed_globals(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def test_exact_resume_is_bit_identical(tmp_path):
    model, opt, sched = _build(0)
    _seed_globals(1)
    _train(model, opt, sched, torch.Generator().manual_seed(2), TOTAL)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    model, opt, sched = _build(0)
    _seed_globals(1)
    gen = torch.Generator().manual_seed(2)
    _train(model, opt, sched, gen, HALF)
    save_checkpoint(tmp_path, HALF, model.state_dict(), opt, sched, {"data_rng": gen.get_state(), "epoch": 0})
    expected_opt = opt.state_dict()

    # Fresh objects with a different initialisation and scrambled RNGs: everything must come from disk.
    model, opt, sched = _build(99)
    _seed_globals(12345)
    loaded = load_checkpoint(tmp_path)
    assert loaded.step == HALF and loaded.run_state["epoch"] == 0
    model.load_state_dict(loaded.model_state)
    opt.load_state_dict(loaded.optimizer_state)
    sched.load_state_dict(loaded.scheduler_state)
    restore_rng(loaded)
    gen = torch.Generator()
    gen.set_state(loaded.run_state["data_rng"])

    state = opt.state_dict()
    assert state["param_groups"] == expected_opt["param_groups"]  # incl. betas as a tuple
    for idx, per_param in expected_opt["state"].items():
        for name, value in per_param.items():
            assert torch.equal(state["state"][idx][name], value), (idx, name)

    _train(model, opt, sched, gen, TOTAL - HALF)
    for k, v in model.state_dict().items():
        assert torch.equal(v, reference[k]), k
    assert sched.last_epoch == TOTAL


def test_file_layout_and_keys(tmp_path):
    model, opt, sched = _build(0)
    _train(model, opt, sched, torch.Generator().manual_seed(0), 2)
    folder = save_checkpoint(tmp_path, 123, model.state_dict(), opt, sched, {"note": "x"})
    assert folder == tmp_path / "step_000123"
    assert sorted(p.name for p in folder.iterdir()) == [
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
        "state.safetensors",
    ]
    assert (tmp_path / "latest").read_text().strip() == "step_000123"
    with safe_open(str(folder / "optimizer.safetensors"), "pt") as f:
        assert set(f.keys()) == {f"state.{i}.{n}" for i in (0, 1) for n in ("step", "exp_avg", "exp_avg_sq")}
    with safe_open(str(folder / "state.safetensors"), "pt") as f:
        assert f.get_tensor("rng.torch").dtype == torch.uint8
    state = json.loads((folder / "state.json").read_text())
    assert state["step"] == 123 and state["run_state"] == {"note": "x"}
    assert state["scheduler"]["lr_lambdas"] == [{"warmup_steps": 3, "total_steps": TOTAL, "min_ratio": 0.01}]


def test_rng_restore_reproduces_draws(tmp_path):
    _seed_globals(5)
    save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)})
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    _seed_globals(6)
    restore_rng(load_checkpoint(tmp_path))
    torch.testing.assert_close(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def test_tied_and_strided_model_tensors(tmp_path):
    shared = torch.arange(12.0).reshape(3, 4)
    state = {"a": shared, "b": shared, "t": shared.T, "s": torch.tensor(3.5)}
    loaded = load_checkpoint(save_checkpoint(tmp_path, 0, state, save_rng=False))
    for k, v in state.items():
        assert torch.equal(loaded.model_state[k], v), k
    assert loaded.optimizer_state is None and loaded.scheduler_state is None and loaded.rng is None


def test_keep_prunes_oldest(tmp_path):
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, {"w": torch.full((2,), float(step))}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000004", "step_000005"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step_000005"
    assert float(load_checkpoint(tmp_path).model_state["w"][0]) == 5.0
    for step in range(6, 9):
        save_checkpoint(tmp_path, step, {"w": torch.zeros(1)}, keep=None)
    assert len(list(tmp_path.glob("step_*"))) == 5


def test_latest_falls_back_without_marker(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None
    save_checkpoint(tmp_path, 7, {"w": torch.zeros(1)})
    save_checkpoint(tmp_path, 12, {"w": torch.ones(1)})
    (tmp_path / "latest").unlink()
    assert latest_checkpoint(tmp_path) == tmp_path / "step_000012"
    (tmp_path / "latest").write_text("step_999999\n")  # stale marker
    assert latest_checkpoint(tmp_path) == tmp_path / "step_000012"
    assert load_checkpoint(tmp_path / "step_000007").step == 7


def test_remove_checkpoints_deletes_only_checkpoints(tmp_path):
    run = tmp_path / "ckpts"
    for step in (1, 2, 3):
        save_checkpoint(run, step, {"w": torch.zeros(1)}, keep=None)
    (run / ".step_000004.crashed.tmp").mkdir()  # left by a crashed save
    (run / "step_notes").mkdir()  # not a checkpoint name
    (run / "README.md").write_text("mine")
    ckpt_mod.remove_checkpoints(run)
    assert sorted(p.name for p in run.iterdir()) == ["README.md", "step_notes"]
    assert latest_checkpoint(run) is None
    # A folder holding nothing but checkpoints goes entirely; a missing one is fine.
    only = tmp_path / "only"
    save_checkpoint(only, 5, {"w": torch.zeros(1)})
    ckpt_mod.remove_checkpoints(only)
    ckpt_mod.remove_checkpoints(only)
    assert not only.exists() and list(tmp_path.iterdir()) == [run]


def _no_temp_files(root):
    return [str(p) for p in root.rglob("*") if p.name.endswith(".tmp")] == []


def test_no_tmp_leftovers_and_crash_safety(tmp_path, monkeypatch):
    model, opt, sched = _build(0)
    for step in (1, 2, 2):  # includes re-saving a step
        save_checkpoint(tmp_path, step, model.state_dict(), opt, sched, keep=3)
    assert _no_temp_files(tmp_path)

    real = ckpt_mod.atomic_write

    def crash_on_state_json(path, write):
        if path.name == "state.json":
            raise KeyboardInterrupt("simulated crash")
        return real(path, write)

    monkeypatch.setattr(ckpt_mod, "atomic_write", crash_on_state_json)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 3, model.state_dict(), opt, sched)
    with pytest.raises(KeyboardInterrupt):  # a failed re-save keeps the previous one
        save_checkpoint(tmp_path, 2, model.state_dict(), opt, sched)
    monkeypatch.setattr(ckpt_mod, "atomic_write", real)
    assert not (tmp_path / "step_000003").exists() and _no_temp_files(tmp_path)
    assert latest_checkpoint(tmp_path) == tmp_path / "step_000002"
    assert load_checkpoint(tmp_path).step == 2

    with pytest.raises(CheckpointError, match="cannot store"):  # never falls back to pickle
        save_checkpoint(tmp_path, 4, model.state_dict(), run_state={"obj": object()})
    assert _no_temp_files(tmp_path)


@pytest.mark.parametrize("damage", ["truncate_model", "flip_optimizer", "garbage_json", "drop_file", "no_json"])
def test_damaged_checkpoint_gives_clear_error(tmp_path, damage):
    model, opt, sched = _build(0)
    _train(model, opt, sched, torch.Generator().manual_seed(0), 1)
    folder = save_checkpoint(tmp_path, 3, model.state_dict(), opt, sched)
    if damage == "truncate_model":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "flip_optimizer":
        data = bytearray((folder / "optimizer.safetensors").read_bytes())
        data[-3] ^= 0xFF
        (folder / "optimizer.safetensors").write_bytes(bytes(data))
    elif damage == "garbage_json":
        (folder / "state.json").write_text('{"format": 1, "step": ')
    elif damage == "drop_file":
        (folder / "state.safetensors").unlink()
    else:
        (folder / "state.json").unlink()
    with pytest.raises(CheckpointError, match="damaged") as info:
        load_checkpoint(folder)
    assert isinstance(info.value, InputError) and "\n" not in str(info.value)


def test_missing_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)


def test_warmup_cosine_schedule():
    f = WarmupCosine(warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0) and f(9) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    values = [f(s) for s in range(4, 15)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_cosine(opt, 0, 10, min_ratio=0.0)
    lrs = []
    for _ in range(11):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2.0) and lrs[5] == pytest.approx(1.0) and lrs[10] == pytest.approx(0.0, abs=1e-12)
    assert math.isclose(lrs[2], 1.0 + math.cos(math.pi * 0.2))
    with pytest.raises(ValueError):
        warmup_cosine(opt, 5, 0)
