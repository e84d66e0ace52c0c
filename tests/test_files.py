"""Output files: atomic replacement, strict JSON (no NaN/Infinity ever written), output folders checked up front."""

from __future__ import annotations

import json
import math

import pytest

from da3_splat.errors import InputError
from da3_splat.files import atomic_path, atomic_write, check_output_dir, write_json


def test_atomic_write_replaces_only_when_complete(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write(path, lambda f: f.write(b"old"))

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    with atomic_path(tmp_path / "sub" / "b.txt") as tmp:
        tmp.write_text("new")
        assert not (tmp_path / "sub" / "b.txt").exists()
    assert (tmp_path / "sub" / "b.txt").read_text() == "new"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_write_json_refuses_non_finite_numbers(tmp_path, bad):
    with pytest.raises(ValueError, match=r"non-finite number .*frames\.1\.fl_x"):
        write_json(tmp_path / "t.json", {"frames": [{"fl_x": 1.0}, {"fl_x": bad}]})
    assert not (tmp_path / "t.json").exists()
    write_json(tmp_path / "t.json", {"frames": [{"fl_x": 1e300}]})
    assert json.loads((tmp_path / "t.json").read_text()) == {"frames": [{"fl_x": 1e300}]}


def test_check_output_dir(tmp_path):
    check_output_dir(tmp_path / "new" / "deeper", overwrite=False)  # creatable: fine, and nothing is created
    assert not (tmp_path / "new").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(InputError, match="not empty; pass --overwrite"):
        check_output_dir(tmp_path / "full", overwrite=False)
    check_output_dir(tmp_path / "full", overwrite=True)
    with pytest.raises(InputError, match="exists and is not a folder"):
        check_output_dir(tmp_path / "full" / "x", overwrite=True)
    with pytest.raises(InputError, match="is not a folder"):
        check_output_dir(tmp_path / "full" / "x" / "sub", overwrite=False)
    with pytest.raises(InputError, match="cannot create output /proc/da3-splat"):
        check_output_dir(tmp_path.root + "proc/da3-splat", overwrite=False)
