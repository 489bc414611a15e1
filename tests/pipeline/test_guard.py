"""Never lose or mix a user's data: safe output folders, plain-name ids, trustworthy resume, the run lock,
EXIF orientation, capped workers."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from PIL import Image, ImageOps

from common import datasets, guard
from common.guard import FolderLock, GuardError
from common.guard import sha256_file
from pipeline.export import export_masks
from pipeline.run import ParentGone, RunConfig, plan_shards, process_shard, run_pseudomasks
from pipeline.shards import verify, write_shard, ShardError, ShardReader, ShardRecord

SMALL = RunConfig(size=64, shard_size=3)


def lesion_rgb(seed: int, h: int = 96, w: int = 128, *, dark: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Skin-toned RGB ``(h, w, 3) uint8`` with an off-centre elliptic lesion ``(h, w) bool``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    cy, cx = h * rng.uniform(0.35, 0.45), w * rng.uniform(0.3, 0.4)
    lesion = ((yy - cy) / (0.22 * h)) ** 2 + ((xx - cx) / (0.18 * w)) ** 2 < 1
    skin = np.array([215, 165, 140], np.float32) + rng.normal(0, 5, (h, w, 3))
    spot = np.array([110, 70, 50] if dark else [170, 120, 100], np.float32) + rng.normal(0, 5, (h, w, 3))
    return np.clip(np.where(lesion[..., None], spot, skin), 0, 255).astype(np.uint8), lesion


def make_folder(root: Path, n: int, *, seed0: int = 0) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        image, lesion = lesion_rgb(seed0 + i)
        Image.fromarray(image).save(root / "images" / f"IMG_{i:03d}.png")
        cv2.imwrite(str(root / "masks" / f"IMG_{i:03d}_segmentation.png"), lesion.astype(np.uint8) * 255)
    return root


def corrupt_dataset_chunk(path: Path, name: str) -> None:
    """Flip one byte inside the stored data of dataset ``name`` (its first chunk, or its contiguous block)."""
    with h5py.File(path, "r") as f:
        ds = f[name]
        offset = ds.id.get_chunk_info(0).byte_offset if ds.chunks else ds.id.get_offset()
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x04
    path.write_bytes(bytes(raw))


# --- export -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("guard")
    data = make_folder(root / "data", 4)
    run_pseudomasks(data, root / "shards", config=SMALL, progress=False)
    return data, root / "shards"


def test_export_never_overwrites_expert_masks(run_dir):
    data, shards = run_dir
    before = {p.name: p.read_bytes() for p in (data / "masks").iterdir()}
    with pytest.raises(GuardError, match="did not write"):
        export_masks(shards, data / "masks", progress=False)
    assert {p.name: p.read_bytes() for p in (data / "masks").iterdir()} == before
    with pytest.raises(GuardError, match="overlaps the input"):
        export_masks(shards, shards, progress=False)


def test_export_rerun_replaces_only_its_own_files(run_dir, tmp_path):
    _, shards = run_dir
    out = tmp_path / "png"
    assert export_masks(shards, out, progress=False) == 4
    assert export_masks(shards, out, progress=False) == 4  # its own files: fine
    (out / "mine_segmentation.png").write_bytes(b"a user's file")
    assert export_masks(shards, out, progress=False) == 4  # not one of the names it writes: untouched
    assert (out / "mine_segmentation.png").read_bytes() == b"a user's file"


@pytest.mark.parametrize("bad_id", ["../escaped", "/abs/escaped", "..", "a/b"])
def test_a_crafted_shard_id_cannot_write_outside_out(tmp_path, bad_id):
    s = 32
    record = ShardRecord(id=bad_id, path="/x.jpg", orig_shape=(40, 50), image=np.zeros((s, s, 3), np.uint8),
                         hair_mask=np.zeros((s, s), bool), prob=np.zeros((s, s), np.float32),
                         pseudo_mask=np.ones((s, s), bool), no_lesion=False, diagnostics={})
    shards = tmp_path / "shards"
    write_shard(shards / "shard-00000.h5", [record], size=s, config_json="{}", config_hash="h",
                planned_ids=[bad_id], rejects=[], versions={})
    out = tmp_path / "deep" / "out"
    with pytest.raises(GuardError, match="not a plain file name"):
        export_masks(shards, out, progress=False)
    written = [p for p in tmp_path.rglob("*.png")]
    assert written == [] and not out.exists()


def test_ids_with_spaces_and_unicode_go_through(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i, name in enumerate(["lésion 1", "病变"]):
        Image.fromarray(lesion_rgb(i)[0]).save(data / f"{name}.png")
    run_pseudomasks(data, tmp_path / "shards", config=SMALL, progress=False)
    assert export_masks(tmp_path / "shards", tmp_path / "png", progress=False) == 2
    assert (tmp_path / "png" / "病变_segmentation.png").is_file()


# --- output folders -----------------------------------------------------------------------------------------

def test_pseudomasks_refuses_out_overlapping_data_and_creates_nothing_for_missing_data(run_dir, tmp_path):
    data, _ = run_dir
    for out in (data, data / "shards", data / "images"):
        with pytest.raises(GuardError, match="overlaps the input"):
            run_pseudomasks(data, out, config=SMALL, progress=False)
    assert not (data / "shards").exists() and not list((data / "images").glob("shard-*"))
    with pytest.raises(datasets.DatasetError, match="folder does not exist"):
        run_pseudomasks(tmp_path / "missing", tmp_path / "out", config=SMALL, progress=False)
    assert not (tmp_path / "out").exists()
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(GuardError, match="not a folder"):
        run_pseudomasks(data, tmp_path / "a_file", config=SMALL, progress=False)


# --- resume -------------------------------------------------------------------------------------------------

def test_resume_redoes_shards_made_from_other_files_with_the_same_ids(tmp_path):
    first = make_folder(tmp_path / "first", 3, seed0=0)
    second = tmp_path / "second"
    (second / "images").mkdir(parents=True)
    for i in range(3):  # same ids, other pictures: lesions elsewhere
        image = np.ascontiguousarray(lesion_rgb(i)[0][::-1, ::-1])
        Image.fromarray(image).save(second / "images" / f"IMG_{i:03d}.png")
    out = tmp_path / "out"
    run_pseudomasks(first, out, config=SMALL, progress=False)
    again = run_pseudomasks(second, out, config=SMALL, progress=False)
    assert again.n_resumed_shards == 0
    fresh = run_pseudomasks(second, tmp_path / "fresh", config=SMALL, progress=False)
    assert fresh.n_samples == 3
    with ShardReader(out / "shard-00000.h5") as a, ShardReader(tmp_path / "fresh" / "shard-00000.h5") as b:
        assert np.array_equal(a.column("pseudo_mask"), b.column("pseudo_mask"))
        assert all(str(second) in p for p in (s["path"] for s in a))


def test_a_damaged_shard_is_redone_never_re_blessed(tmp_path):
    data = make_folder(tmp_path / "data", 3)
    out = tmp_path / "out"
    run_pseudomasks(data, out, config=SMALL, progress=False)
    shard = out / "shard-00000.h5"
    good = sha256_file(shard)
    with ShardReader(shard) as s:
        shapes = s.column("orig_shape").copy()
    corrupt_dataset_chunk(shard, "orig_shape")
    with pytest.raises(ShardError, match="'orig_shape' cannot be read"):  # fletcher32 covers it now
        with ShardReader(shard) as s:
            s.column("orig_shape")
    assert verify(out)  # the manifest's sha256 no longer matches
    rerun = run_pseudomasks(data, out, config=SMALL, progress=False)
    assert rerun.n_resumed_shards == 0 and sha256_file(shard) == good and verify(out) == []
    with ShardReader(shard) as s:
        assert np.array_equal(s.column("orig_shape"), shapes)


def test_every_dataset_has_a_checksum(run_dir):
    _, shards = run_dir
    names = []
    with h5py.File(shards / "shard-00000.h5", "r") as f:
        f.visititems(lambda name, obj: names.append((name, obj.fletcher32))
                     if isinstance(obj, h5py.Dataset) else None)
    assert {"orig_shape", "id", "path", "no_lesion", "image"} <= {n for n, _ in names}
    assert all(checked for _, checked in names), names


def test_a_second_run_on_the_same_out_is_refused_and_a_stale_lock_taken_over(run_dir, tmp_path):
    data, _ = run_dir
    out = tmp_path / "out"
    out.mkdir()
    with FolderLock(out, command="pseudomasks"):
        with pytest.raises(GuardError, match=r"another run is writing into this folder \(pseudomasks pid "):
            run_pseudomasks(data, out, config=SMALL, progress=False)
    (out / guard.LOCK_NAME).write_text("pseudomasks pid 999999")  # left by a killed run: nobody holds it
    assert run_pseudomasks(data, out, config=SMALL, progress=False).n_samples == 4


# --- workers ------------------------------------------------------------------------------------------------

def test_jobs_are_capped_at_the_work_and_the_cores(run_dir, tmp_path, monkeypatch, caplog):
    import joblib

    data, _ = run_dir
    seen = []
    real = joblib.Parallel

    def spy(*args, **kwargs):
        seen.append(kwargs.get("n_jobs"))
        return real(*args, **kwargs)

    monkeypatch.setattr(joblib, "Parallel", spy)
    with caplog.at_level(logging.INFO, logger="common.guard"):
        summary = run_pseudomasks(data, tmp_path / "out", config=RunConfig(size=64, shard_size=2), jobs=1000,
                                  progress=False)
    assert summary.n_samples == 4
    assert all(n is not None and n <= min(2, guard.available_cores()) for n in seen)
    assert "--jobs 1000 capped to" in caplog.text
    assert guard.cap_jobs(1000, 2) == min(2, guard.available_cores())
    assert guard.cap_jobs(-1, 50) == min(50, guard.available_cores())


def test_an_orphaned_worker_writes_nothing(run_dir, tmp_path, monkeypatch):
    import pipeline.run as run_module

    monkeypatch.setattr(run_module, "watch_parent", lambda pid: None)  # the watcher would end pytest itself
    data, _ = run_dir
    plan = plan_shards(datasets.open_dataset(data), 3)[0]
    not_my_parent = os.getppid() + 1 if os.getppid() + 1 != os.getpid() else os.getppid() + 2
    with pytest.raises(ParentGone):
        process_shard(plan, tmp_path, SMALL, owner_pid=not_my_parent)
    assert list(tmp_path.iterdir()) == []
    process_shard(plan, tmp_path, SMALL, owner_pid=os.getppid())  # its real parent: works
    assert (tmp_path / plan.name).is_file()


def test_workers_end_when_the_run_is_killed(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    code = ("import os, sys, time; from common import guard; guard.watch_parent(os.getppid(), every=0.05); "
            "print(os.getpid(), flush=True); time.sleep(60)")
    # a parent that starts a watching child, prints its pid, then is killed with SIGKILL
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; p = subprocess.Popen([sys.executable, "
                               f"'-c', {code!r}], stdout=sys.stdout); p.wait()"], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2], start_new_session=True)
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    if not _alive(child):
        return
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the child outlived its killed parent")


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for a reaper counts as ended)."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


# --- images -------------------------------------------------------------------------------------------------

def _exif_jpeg(path: Path, rgb: np.ndarray, orientation: int) -> Path:
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, exif=exif.tobytes(), quality=95)
    return path


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_at_every_decode_size(tmp_path, orientation):
    stored, _ = lesion_rgb(1, 600, 2400)
    path = _exif_jpeg(tmp_path / "rotated.jpg", stored, orientation)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    assert datasets.image_size(path) == upright.shape[:2]
    full = datasets.read_image(path)
    reduced = datasets.read_image(path, min_long_side=600)  # a 1/4 decode
    assert full.shape == upright.shape and np.abs(full.astype(int) - upright).mean() < 1
    assert reduced.shape[:2] == (upright.shape[0] // 4, upright.shape[1] // 4)
    small = cv2.resize(upright, reduced.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(reduced.astype(int) - small).mean() < 6


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import zlib

    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def test_png_orientation_is_read_from_exif_before_or_after_the_pixels_and_a_plain_png_is_not_decoded(
        tmp_path, monkeypatch):
    rgb = lesion_rgb(4, 40, 70)[0]
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "before.png", exif=exif.tobytes())  # Pillow writes eXIf before IDAT
    Image.fromarray(rgb).save(tmp_path / "plain.png")
    plain = (tmp_path / "plain.png").read_bytes()
    iend = plain.rindex(b"IEND") - 4
    (tmp_path / "after.png").write_bytes(plain[:iend] + _png_chunk(b"eXIf", exif.tobytes()) + plain[iend:])
    assert datasets.image_header(tmp_path / "before.png")[:3] == (70, 40, 6)
    assert datasets.image_header(tmp_path / "after.png")[:3] == (70, 40, 6)  # found only by decoding
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda im: decoded.append(im) or real_load(im))
    assert datasets.image_header(tmp_path / "plain.png")[:3] == (40, 70, 1)
    assert decoded == []  # the chunk walk answered: no pixel was decoded
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(plain[:iend - 20])  # no IEND: Pillow decides (and the file is named as unreadable later)
    with Image.open(truncated) as im:
        where = im.fp.tell()
        assert not datasets._png_without_exif(im)
        assert im.fp.tell() == where  # the walk left the file where Pillow had it


def test_exif_rotated_jpeg_gives_an_upright_mask_at_the_upright_size(tmp_path):
    stored, lesion = lesion_rgb(2, 96, 160)
    data = tmp_path / "data"
    data.mkdir()
    _exif_jpeg(data / "rot.jpg", stored, 6)  # viewers show it turned 90 degrees clockwise
    run_pseudomasks(data, tmp_path / "shards", config=SMALL, progress=False)
    export_masks(tmp_path / "shards", tmp_path / "png", progress=False)
    mask = cv2.imread(str(tmp_path / "png" / "rot_segmentation.png"), cv2.IMREAD_UNCHANGED) > 0
    truth = np.rot90(lesion, k=-1)  # clockwise, as the viewer shows it
    assert mask.shape == truth.shape == (160, 96)
    assert (mask & truth).sum() / (mask | truth).sum() > 0.85


def test_grey_plus_alpha_is_rejected_and_a_symlink_loop_named(tmp_path):
    grey = lesion_rgb(3)[0][:, :, 0]
    Image.fromarray(grey).convert("LA").save(tmp_path / "la.png")
    with pytest.raises(datasets.ImageReadError, match="grey-scale"):
        datasets.read_image(tmp_path / "la.png")
    os.symlink(tmp_path / "loop.jpg", tmp_path / "loop.jpg")
    with pytest.raises(datasets.ImageReadError, match="symbolic link loop"):
        datasets.image_size(tmp_path / "loop.jpg")
