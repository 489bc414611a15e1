"""Every size, count and id read from a shard is bounds-checked before it is used: a crafted shard is refused in
one line naming it, before anything is allocated from its numbers (round 3, item 4)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
import pipeline.export as export_module
from common.datasets import MAX_PIXELS, MAX_SIDE
from common.guard import GuardError
from pipeline.shards import MAX_ROWS, MAX_STORAGE_SIZE, ShardError, ShardReader, ShardRecord, write_shard

S = 32


def shard(folder: Path, *, ids=("A", "B"), source: Path | None = None, orig_shape=(48, 64)) -> Path:
    """A valid shard of ``ids`` with its manifest (as pseudomasks leaves them); returns the shard file."""
    records = [ShardRecord(id=i, path=str(source or f"/gone/{i}.jpg"), orig_shape=orig_shape,
                           image=np.full((S, S, 3), 120, np.uint8), hair_mask=np.zeros((S, S), bool),
                           prob=np.full((S, S), 0.7, np.float32), pseudo_mask=np.eye(S, dtype=bool),
                           no_lesion=False, diagnostics={}) for i in ids]
    path = folder / "shard-00000.h5"
    digest = write_shard(path, records, size=S, config_json="{}", config_hash="h", planned_ids=list(ids),
                         rejects=[], versions={})
    (folder / "manifest.json").write_text(json.dumps({"schema_version": 1, "shards": [
        {"file": path.name, "rows": len(ids), "rejected": 0, "sha256": digest}]}))
    return path


def craft(path: Path, edit) -> None:
    """Change the shard with ``edit(h5py.File)`` and keep ``manifest.json`` consistent with it."""
    with h5py.File(path, "r+") as f:
        edit(f)
    manifest = json.loads((path.parent / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (path.parent / "manifest.json").write_text(json.dumps(manifest))


def set_orig_shape(value):
    def edit(f):
        f["orig_shape"][0] = value
    return edit


def set_ids(ids):
    def edit(f):
        data = [i.encode() for i in ids]
        del f["id"]
        f.create_dataset("id", data=np.array(data, dtype=f"S{max(map(len, data))}"), chunks=(len(data),),
                         fletcher32=True)
    return edit


def export_one_line(tmp_path: Path, shards: Path, monkeypatch) -> str:
    """Run ``export`` on ``shards``; it must fail in one line before resizing any mask."""
    def no_resize(*args, **kwargs):
        raise AssertionError("a mask was resized from a crafted shard")

    monkeypatch.setattr(export_module, "mask_to_original", no_resize)
    result = CliRunner().invoke(cli.main, ["export", "--shards", str(shards), "--out", str(tmp_path / "png")])
    errors = [ln for ln in result.output.splitlines() if ln.startswith("edgedino: error: ")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert not (tmp_path / "png").exists()
    return errors[0]


@pytest.mark.parametrize("value, words", [
    ((60000, 60000), "orig_shape 60000 x 60000 is 3,600,000,000 pixels; the largest image edgedino reads has "
                     "400,000,000"),
    ((0, 100), "orig_shape height is 0; expected a whole number in [1, 65535]"),
    ((-5, 100), "orig_shape height is -5"),
    ((100, 0), "orig_shape width is 0"),
    ((70000, 10), "orig_shape height is 70000"),
    ((20000, 20001), "400,020,000 pixels"),
])
def test_a_crafted_orig_shape_is_refused_in_one_line_before_any_allocation(tmp_path, monkeypatch, value, words):
    path = shard(tmp_path / "shards")
    craft(path, set_orig_shape(value))
    line = export_one_line(tmp_path, path.parent, monkeypatch)
    assert line.startswith(f"edgedino: error: {path}: A: ") and words in line, line


def test_orig_shape_must_be_the_size_of_the_image_it_was_made_from(tmp_path, monkeypatch):
    image = tmp_path / "A.jpg"
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(image)
    path = shard(tmp_path / "shards", ids=("A",), source=image)
    craft(path, set_orig_shape((4800, 6400)))  # plausible in itself, but not this image's size
    line = export_one_line(tmp_path, path.parent, monkeypatch)
    assert f"{path}: A: orig_shape 4800 x 6400 differs from its image {image} (48 x 64)" in line
    craft(path, set_orig_shape((48, 64)))  # its own size again: exported (the source is read for its header only)
    monkeypatch.undo()
    result = CliRunner().invoke(cli.main, ["export", "--shards", str(path.parent), "--out", str(tmp_path / "png")])
    assert result.exit_code == 0 and np.asarray(Image.open(tmp_path / "png" / "A_segmentation.png")).shape == (48, 64)


@pytest.mark.parametrize("bad_id, words", [
    ("a\x1b[31mb", "not a plain file name"),
    ("line\nbreak", "not a plain file name"),
    ("tab\there", "not a plain file name"),
    ("../escaped", "not a plain file name"),
    ("a/b", "not a plain file name"),
    ("x" * 201, "dataset 'id' is |S201; expected text of at most 200 bytes"),
])
def test_a_crafted_id_is_refused_in_one_line(tmp_path, monkeypatch, bad_id, words):
    path = shard(tmp_path / "shards")
    craft(path, set_ids([bad_id, "B"]))
    line = export_one_line(tmp_path, path.parent, monkeypatch)
    assert line.startswith(f"edgedino: error: {path}: ") and words in line
    assert "\x1b" not in line and "\n" not in line.strip()
    assert [p for p in tmp_path.rglob("*") if p.suffix == ".png"] == []


def test_unicode_and_spaces_in_ids_are_fine(tmp_path):
    path = shard(tmp_path / "shards", ids=("lésion 1", "病变"))
    with ShardReader(path) as s:
        assert s.ids == ["lésion 1", "病变"]


def raw_shard(path: Path, *, n: int, size: int = S, n_masks: int | None = None) -> Path:
    """A schema-1 shard written directly with h5py: ``n`` rows declared (chunks never written, so a huge ``n``
    costs nothing on disk), ``n_masks`` rows in ``pseudo_mask``."""
    with h5py.File(path, "w") as f:
        f.attrs["schema_version"] = 1
        f.attrs["size"] = size
        f.create_dataset("image", shape=(n, size, size, 3), dtype=np.uint8, chunks=(1, min(size, 64), min(size, 64), 3))
        for key in ("hair_mask", "prob"):
            f.create_dataset(key, shape=(n, size, size), dtype=np.uint8, chunks=(1, min(size, 64), min(size, 64)))
        rows = n if n_masks is None else n_masks
        f.create_dataset("pseudo_mask", shape=(rows, size, size), dtype=np.uint8,
                         chunks=(1, min(size, 64), min(size, 64)))
        for key, dtype in (("id", "S8"), ("path", "S8"), ("no_lesion", np.uint8)):
            f.create_dataset(key, shape=(n,), dtype=dtype, chunks=(min(n, 1024),))
        f.create_dataset("orig_shape", shape=(n, 2), dtype=np.int32, chunks=(min(n, 1024), 2))
    return path


@pytest.mark.parametrize("case, words", [
    ("a million rows", f"the row count is 1000000; expected a whole number in [0, {MAX_ROWS}]"),
    ("storage size 8192", f"the storage size S is 8192; expected a whole number in [1, {MAX_STORAGE_SIZE}]"),
    ("masks one row short", "dataset 'pseudo_mask' has shape (3, 32, 32), expected (4, 32, 32)"),
    ("no path column", "missing datasets ['path']"),
])
def test_a_crafted_count_or_size_is_refused_on_open(tmp_path, case, words):
    path = tmp_path / "shard-00000.h5"
    if case == "a million rows":
        raw_shard(path, n=1_000_000)
    elif case == "storage size 8192":
        raw_shard(path, n=1, size=8192)
    elif case == "masks one row short":
        raw_shard(path, n=4, n_masks=3)
    else:
        raw_shard(path, n=2)
        with h5py.File(path, "r+") as f:
            del f["path"]
    with pytest.raises(ShardError) as err:
        ShardReader(path)
    assert str(err.value).startswith(f"{path}: ") and words in str(err.value)
    assert isinstance(err.value, GuardError)


def test_the_bounds_are_the_ones_stage_1_writes_within():
    """The CLI's --size and --shard-size stop where a shard's bounds do; images above the pixel bound are refused
    when read, so pseudomasks never records an orig_shape that export would refuse."""
    from click.testing import CliRunner as Runner

    params = {p.name: p for p in cli.pseudomasks.params}
    assert params["size"].type.max == MAX_STORAGE_SIZE and params["shard_size"].type.max == MAX_ROWS
    assert MAX_PIXELS == 400_000_000 and MAX_SIDE == 65_535
    assert Runner().invoke(cli.main, ["pseudomasks", "--data", ".", "--out", "x", "--size", "5000"]).exit_code == 2
