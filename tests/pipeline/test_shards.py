"""The shard schema: round trip, layout for HDF5 tools, determinism, and verification."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from common.guard import sha256_file
from pipeline.shards import SCHEMA_VERSION, verify, write_manifest, write_shard, ShardError, ShardReader, ShardRecord

S = 32


def _records(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        prob = rng.random((S, S)).astype(np.float32)
        out.append(ShardRecord(id=f"ID_{i}", path=f"/data/ID_{i}.jpg", orig_shape=(100 + i, 150),
                               image=rng.integers(0, 255, (S, S, 3), dtype=np.uint8),
                               hair_mask=rng.random((S, S)) > 0.9, prob=prob, pseudo_mask=prob > 0.5,
                               no_lesion=i == 2, diagnostics={"fg_seed_fraction": 0.1 * i, "hair_fraction": 0.0}))
    return out


def _write(path, records, **kw):
    args = dict(size=S, config_json='{"size": 32}', config_hash="abc", planned_ids=[r.id for r in records],
                rejects=[], versions={"numpy": np.__version__})
    args.update(kw)
    write_shard(path, records, **args)


def test_round_trip_and_layout(tmp_path):
    records = _records(4)
    path = tmp_path / "shard-00000.h5"
    _write(path, records, rejects=[{"id": "bad", "path": "/data/bad.jpg", "reason": "corrupt"}])
    with ShardReader(path) as shard:
        assert len(shard) == 4 and shard.ids == ["ID_0", "ID_1", "ID_2", "ID_3"]
        s = shard[1]
        np.testing.assert_array_equal(s["image"], records[1].image)
        np.testing.assert_array_equal(s["pseudo_mask"], records[1].pseudo_mask.astype(np.uint8))
        np.testing.assert_array_equal(s["hair_mask"], records[1].hair_mask.astype(np.uint8))
        assert np.abs(s["prob"] / 255.0 - records[1].prob).max() <= 0.5 / 255 + 1e-6
        assert tuple(s["orig_shape"]) == (101, 150) and s["path"] == "/data/ID_1.jpg"
        assert shard[2]["no_lesion"] and not s["no_lesion"]
        np.testing.assert_allclose(shard.diagnostics["fg_seed_fraction"], [0, 0.1, 0.2, 0.3], atol=1e-6)
        assert shard.rejects[0]["reason"] == "corrupt"
        assert shard.attrs["schema_version"] == SCHEMA_VERSION
    with h5py.File(path) as f:  # what h5ls/HDFView users rely on
        assert f["image"].chunks == (1, S, S, 3) and f["image"].fletcher32
        for key in ("hair_mask", "prob", "pseudo_mask"):
            assert f[key].chunks == (1, S, S) and f[key].compression == "gzip" and f[key].fletcher32


def test_same_records_give_identical_bytes(tmp_path):
    _write(tmp_path / "a.h5", _records(3))
    _write(tmp_path / "b.h5", _records(3))
    _write(tmp_path / "c.h5", _records(3, seed=1))
    assert sha256_file(tmp_path / "a.h5") == sha256_file(tmp_path / "b.h5")
    assert sha256_file(tmp_path / "a.h5") != sha256_file(tmp_path / "c.h5")


def test_empty_shard_is_valid(tmp_path):
    _write(tmp_path / "e.h5", [], planned_ids=["x"], rejects=[{"id": "x", "path": "x.jpg", "reason": "r"}])
    with ShardReader(tmp_path / "e.h5") as shard:
        assert len(shard) == 0 and shard.rejects[0]["id"] == "x"


def test_wrong_schema_is_named(tmp_path):
    path = tmp_path / "s.h5"
    _write(path, _records(1))
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(ShardError, match=r"s\.h5: schema version 99"):
        ShardReader(path)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ShardError, match="junk.h5: not a readable HDF5 shard"):
        ShardReader(tmp_path / "junk.h5")


def test_verify_catches_a_flipped_byte_and_strays(tmp_path):
    path = tmp_path / "shard-00000.h5"
    _write(path, _records(3))
    write_manifest(tmp_path, [{"file": path.name, "rows": 3, "sha256": sha256_file(path)}])
    assert verify(tmp_path) == []
    with h5py.File(path) as f:  # flip a byte inside an image chunk, not in metadata
        offset = f["image"].id.get_chunk_info(1).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 10] ^= 0xFF
    path.write_bytes(bytes(data))
    problems = verify(tmp_path)
    assert any("sha256" in p for p in problems)
    assert any("unreadable" in p for p in problems), problems  # fletcher32 caught the chunk too
    _write(tmp_path / "shard-00001.h5", _records(1))
    assert any("not listed" in p for p in verify(tmp_path))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["shards"][0]["rows"] == 3


def test_confidence_column_and_old_shards_without_it(tmp_path):
    old = tmp_path / "shard-00000.h5"
    _write(old, _records(3))                    # diagnostics without "confidence": a shard from before it
    with ShardReader(old) as shard:
        assert shard.confidence().shape == (3,) and np.isnan(shard.confidence()).all()
    records = [ShardRecord(**{**r.__dict__, "diagnostics": {**r.diagnostics, "confidence": 0.1 * i}})
               for i, r in enumerate(_records(3))]
    new = tmp_path / "shard-00001.h5"
    _write(new, records)
    with ShardReader(new) as shard:
        np.testing.assert_allclose(shard.confidence(), [0.0, 0.1, 0.2], atol=1e-6)
    from pipeline.report import summarise

    text = summarise(new, threshold=0.15).text()
    assert "confidence below 0.15: 2 of 3" in text and "low confidence 0.000: ID_0" in text
    assert "not stored" in summarise(old).text()


def test_inspect_shows_the_walker_cuts_and_old_shards_without_them(tmp_path):
    from pipeline.report import summarise

    old = tmp_path / "old" / "shard-00000.h5"
    old.parent.mkdir()
    _write(old, _records(3))  # no diag/threshold: a shard from before the learned cut
    assert summarise(old).walker_cut == [] and "walker cut" not in summarise(old).text()
    records = [ShardRecord(**{**r.__dict__, "diagnostics": {**r.diagnostics, "threshold": t}})
               for t, r in zip((0.25, 0.5, 0.7), _records(3))]
    new = tmp_path / "shard-00001.h5"
    _write(new, records)
    summary = summarise(new)
    lesions = [not r.no_lesion for r in records]
    np.testing.assert_allclose(summary.walker_cut, [t for t, keep in zip((0.25, 0.5, 0.7), lesions) if keep],
                               atol=1e-6)
    line = next(x for x in summary.text().splitlines() if "walker cut" in x)
    assert f"max {max(summary.walker_cut):.3f}" in line
