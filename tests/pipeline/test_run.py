"""The pseudo-mask run end to end: bad inputs, resume, determinism across jobs/backends, kill and rerun."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from common import datasets
from common.guard import input_part, inputs_hash
from common.guard import sha256_file
from pipeline.export import export_masks
from pipeline.run import RunConfig, _execute, plan_shards, run_pseudomasks
from pipeline.shards import find_shards, verify, ShardReader

REPO = Path(__file__).resolve().parents[2]
SMALL = RunConfig(size=64, shard_size=3)


def lesion_image(seed: int, h: int = 96, w: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Skin-toned RGB with a dark irregular ellipse; returns (image (h,w,3) uint8, lesion (h,w) bool)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    cy, cx = h / 2 + rng.uniform(-8, 8), w / 2 + rng.uniform(-8, 8)
    ry, rx = rng.uniform(0.2, 0.3) * h, rng.uniform(0.2, 0.3) * w
    lesion = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    skin = np.array([215, 165, 140], np.float32) + rng.normal(0, 6, (h, w, 3))
    image = np.where(lesion[..., None], np.array([110, 70, 50], np.float32) + rng.normal(0, 6, (h, w, 3)), skin)
    return np.clip(image, 0, 255).astype(np.uint8), lesion


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rgb[:, :, ::-1].copy())
    return path


def good_folder(root: Path, n: int) -> Path:
    for i in range(n):
        image, lesion = lesion_image(i)
        write_rgb(root / "images" / f"IMG_{i:03d}.jpg", image)
        (root / "masks").mkdir(exist_ok=True)
        assert cv2.imwrite(str(root / "masks" / f"IMG_{i:03d}_segmentation.png"), lesion.astype(np.uint8) * 255)
    return root


def shard_hashes(out: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in find_shards(out)}


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory) -> Path:
    root = good_folder(tmp_path_factory.mktemp("bad") / "data", 4)
    img = root / "images"
    full = cv2.imencode(".jpg", lesion_image(9)[0])[1].tobytes()
    (img / "corrupt.jpg").write_bytes(full[: len(full) // 3])
    (img / "zero.jpg").write_bytes(b"")
    (img / "folder.jpg").mkdir()
    cv2.imwrite(str(img / "grey.png"), lesion_image(10)[0][:, :, 0])
    rgba = np.dstack([lesion_image(11)[0][:, :, ::-1], np.full((96, 128), 255, np.uint8)])
    cv2.imwrite(str(img / "rgba.png"), rgba)
    cv2.imwrite(str(img / "deep.png"), lesion_image(12)[0][:, :, ::-1].astype(np.uint16) * 257)
    write_rgb(img / "tiny.jpg", lesion_image(13, 20, 24)[0])
    big, _ = lesion_image(14, 600, 800)
    write_rgb(img / "huge.jpg", cv2.resize(big, (8000, 6000), interpolation=cv2.INTER_NEAREST))
    write_rgb(img / "uniform.jpg", np.full((96, 128, 3), (200, 160, 140), np.uint8))
    write_rgb(img / "mismatch.jpg", lesion_image(15)[0])
    assert cv2.imwrite(str(root / "masks" / "mismatch_segmentation.png"), np.zeros((50, 50), np.uint8))
    return root


@pytest.fixture(scope="module")
def bad_run(bad_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_out")
    result = CliRunner().invoke(cli.main, ["pseudomasks", "--data", str(bad_data), "--out", str(out),
                                           "--size", "64", "--shard-size", "4", "--no-progress"])
    return out, result


def test_bad_inputs_are_rejected_with_reasons_and_the_run_goes_on(bad_run):
    out, result = bad_run
    assert result.exit_code == cli.EXIT_REJECTS, result.output
    assert result.output.strip().splitlines()[-1].endswith(f"6 rejected (see {out / 'rejects.jsonl'})")
    rejects = {r["id"]: r["reason"] for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}
    assert set(rejects) == {"corrupt", "zero", "folder", "grey", "tiny", "mismatch"}
    assert "truncated" in rejects["corrupt"] and "corrupt.jpg" in rejects["corrupt"]
    assert "empty file" in rejects["zero"]
    assert "is a directory" in rejects["folder"]
    assert "grey-scale" in rejects["grey"]
    assert "too small" in rejects["tiny"]
    assert "mask size 50x50 differs" in rejects["mismatch"]


def test_usable_odd_inputs_are_kept(bad_run):
    out, _ = bad_run
    kept = {}
    for path in find_shards(out):
        with ShardReader(path) as shard:
            for s in shard:
                kept[s["id"]] = s
    assert set(kept) == {"IMG_000", "IMG_001", "IMG_002", "IMG_003", "rgba", "deep", "huge", "uniform"}
    assert tuple(kept["huge"]["orig_shape"]) == (6000, 8000)
    assert kept["huge"]["image"].shape == (64, 64, 3)
    assert kept["uniform"]["no_lesion"] and kept["uniform"]["pseudo_mask"].sum() == 0
    for name in ("IMG_000", "deep", "rgba", "huge"):
        assert not kept[name]["no_lesion"]
        assert 0.05 < kept[name]["pseudo_mask"].mean() < 0.6, name


def test_pseudo_masks_find_the_lesions(bad_run, bad_data):
    out, _ = bad_run
    export_dir = out / "png"
    n = export_masks(out, export_dir, progress=False)
    assert n == 8
    for i in range(4):
        pred = datasets.read_mask(export_dir / f"IMG_{i:03d}_segmentation.png")
        truth = datasets.read_mask(bad_data / "masks" / f"IMG_{i:03d}_segmentation.png")
        assert pred.shape == truth.shape == (96, 128)
        jaccard = (pred & truth).sum() / (pred | truth).sum()
        assert jaccard > 0.8, (i, jaccard)
    huge = cv2.imread(str(export_dir / "huge_segmentation.png"), cv2.IMREAD_UNCHANGED)
    assert huge.shape == (6000, 8000) and set(np.unique(huge)) <= {0, 255}


def test_two_jobs_are_this_process_and_one_worker(tmp_path, caplog):
    # the run's own process takes images from the start instead of waiting for the workers to import
    data = good_folder(tmp_path / "data", 7)
    with caplog.at_level(logging.DEBUG, logger="pipeline.run"):
        two = run_pseudomasks(data, tmp_path / "two", config=SMALL, jobs=2, progress=False)
    assert two.n_samples == 7
    lines = [r.getMessage() for r in caplog.records if "processed by the run's own process" in r.getMessage()]
    assert len(lines) == 1 and " of 7 image(s) " in lines[0] and lines[0].endswith("by 1 worker(s)")
    assert int(lines[0].split()[0]) > 0  # joblib's parent processed none: it only waited for its two workers
    one = run_pseudomasks(data, tmp_path / "one", config=SMALL, jobs=1, progress=False)
    assert one.n_samples == 7 and shard_hashes(tmp_path / "one") == shard_hashes(tmp_path / "two")


def test_progress_moves_per_image_whatever_the_shard_size(tmp_path):
    # one shard of 5: the bar must not sit at 0 until the whole shard is written
    data = good_folder(tmp_path / "data", 5)
    config = RunConfig(size=64, shard_size=5)
    plans = plan_shards(datasets.open_dataset(data), config.shard_size)
    assert len(plans) == 1
    for jobs in (1, 2):
        calls: list[int] = []
        out = tmp_path / f"out{jobs}"
        out.mkdir()
        for entry in _execute(plans, out, config, jobs=jobs, backend="loky", scheduler=None, on_images=calls.append):
            assert entry["rows"] == 5 and sum(calls) == 5  # every image reported before its shard is
        assert len(calls) >= 2 and all(n >= 1 for n in calls), (jobs, calls)
        if jobs == 1:
            assert calls == [1] * 5


def test_inputs_hash_from_parts_is_the_hash_of_the_files(tmp_path):
    data = good_folder(tmp_path / "data", 3)
    dataset = datasets.open_dataset(data)
    samples = dataset.samples
    assert inputs_hash(samples, [input_part(s) for s in samples]) == inputs_hash(samples)
    assert inputs_hash(samples[:2]) != inputs_hash(samples)
    out = run_pseudomasks(data, tmp_path / "out", config=RunConfig(size=64, shard_size=2), jobs=2,
                          progress=False).out_dir
    plans = plan_shards(dataset, 2)
    assert len(plans) == 2
    for plan in plans:
        with ShardReader(out / plan.name) as shard:
            assert shard.attrs["inputs_hash"] == inputs_hash(plan.samples)


def test_result_does_not_depend_on_jobs_and_resumes(tmp_path):
    data = good_folder(tmp_path / "data", 7)
    one = run_pseudomasks(data, tmp_path / "one", config=SMALL, jobs=1, progress=False)
    two = run_pseudomasks(data, tmp_path / "two", config=SMALL, jobs=2, progress=False)
    assert one.n_shards == two.n_shards == 3 and one.n_samples == 7
    assert shard_hashes(tmp_path / "one") == shard_hashes(tmp_path / "two")
    (tmp_path / "two" / "shard-00001.h5").unlink()
    again = run_pseudomasks(data, tmp_path / "two", config=SMALL, jobs=2, progress=False)
    assert again.n_resumed_shards == 2
    assert shard_hashes(tmp_path / "one") == shard_hashes(tmp_path / "two")
    assert verify(tmp_path / "two") == []
    other = RunConfig(size=48, shard_size=3)
    with pytest.raises(ValueError, match="another configuration"):
        run_pseudomasks(data, tmp_path / "two", config=other, progress=False)
    redone = run_pseudomasks(data, tmp_path / "two", config=other, overwrite=True, progress=False)
    assert redone.n_resumed_shards == 0 and verify(tmp_path / "two") == []
    for path in sorted((tmp_path / "two").glob("shard-*.h5")):
        with ShardReader(path) as shard:
            assert shard.attrs["config_hash"] == other.hash and shard.column("image").shape[1:3] == (48, 48)


def test_dask_backend_gives_the_same_shards(tmp_path):
    data = good_folder(tmp_path / "data", 4)
    loky = run_pseudomasks(data, tmp_path / "loky", config=SMALL, jobs=1, progress=False)
    dask = run_pseudomasks(data, tmp_path / "dask", config=SMALL, jobs=2, backend="dask", progress=False)
    assert loky.n_samples == dask.n_samples == 4
    assert shard_hashes(tmp_path / "loky") == shard_hashes(tmp_path / "dask")


def test_sigkill_then_rerun_gives_identical_shards(tmp_path):
    data = good_folder(tmp_path / "data", 12)
    args = [sys.executable, str(REPO / "cli.py"), "pseudomasks", "--data", str(data), "--size", "64",
            "--shard-size", "2", "--jobs", "1", "--no-progress"]
    reference = tmp_path / "reference"
    subprocess.run(args + ["--out", str(reference)], check=True, cwd=REPO, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen(args + ["--out", str(out)], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(find_shards(out) if out.exists() else []) < 2 and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(find_shards(out))
    assert 2 <= done_before < 6, "the run should be killed part-way"
    rerun = subprocess.run(args + ["--out", str(out)], cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done_before} shard(s) kept" in rerun.stdout or f"{done_before - 1} shard(s) kept" in rerun.stdout
    assert shard_hashes(out) == shard_hashes(reference)
    assert not list(out.glob("*.partial")) and not list(out.glob(".*.partial"))
    assert verify(out) == []


def _worker_pids(parent: int) -> list[int]:
    """Pids of the loky worker processes whose parent is ``parent`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and b"LokyProcess" in cmdline:
            found.append(int(stat.parent.name))
    return found


def test_a_dead_worker_is_one_line_naming_an_image_and_the_rerun_resumes(tmp_path):
    data = good_folder(tmp_path / "data", 200)  # about 4 s of work: the workers start in under 1 s
    out = tmp_path / "out"
    args = [sys.executable, str(REPO / "cli.py"), "pseudomasks", "--data", str(data), "--out", str(out), "--size",
            "64", "--shard-size", "8", "--jobs", "2", "--no-progress"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (len(find_shards(out) if out.exists() else []) >= 1 and _worker_pids(proc.pid)):
        assert time.time() < deadline and proc.poll() is None, "the run should still be going"
        time.sleep(0.02)
    for pid in _worker_pids(proc.pid):
        os.kill(pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("edgedino: error: ")
    assert ".jpg: the worker process working on this image stopped" in lines[0]
    after_crash = {p.name: sha256_file(p) for p in find_shards(out)}
    assert len(after_crash) < 25, "the run should have stopped part-way"
    assert "shard-00000.h5" in after_crash  # written before the kill: kept
    rerun = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(after_crash)} shard(s) kept" in rerun.stdout and verify(out) == []
    final = shard_hashes(out)
    assert len(final) == 25 and all(final[name] == digest for name, digest in after_crash.items())
    reference = tmp_path / "reference"
    one_job = [sys.executable, str(REPO / "cli.py"), "pseudomasks", "--data", str(data), "--out", str(reference),
               "--size", "64", "--shard-size", "8", "--jobs", "1", "--no-progress"]
    subprocess.run(one_job, cwd=REPO, check=True, capture_output=True)
    assert shard_hashes(reference) == final  # what the crash kept plus what the rerun made: an unbroken run's shards


def test_verify_and_inspect_commands(tmp_path):
    data = good_folder(tmp_path / "data", 3)
    out = tmp_path / "out"
    run_pseudomasks(data, out, config=SMALL, progress=False)
    runner = CliRunner()
    ok = runner.invoke(cli.main, ["verify", str(out)])
    assert ok.exit_code == 0 and "ok:" in ok.output
    shown = runner.invoke(cli.main, ["inspect", str(out), "--png", str(tmp_path / "sheet.png"), "--rows", "3"])
    assert shown.exit_code == 0, shown.output
    assert "shards: 1   samples: 3   rejected: 0" in shown.output
    sheet = cv2.imread(str(tmp_path / "sheet.png"))
    assert sheet is not None and sheet.shape[0] > 200 and sheet.std() > 10
    shard = out / "shard-00000.h5"
    data_bytes = bytearray(shard.read_bytes())
    data_bytes[len(data_bytes) // 2] ^= 0x01
    shard.write_bytes(bytes(data_bytes))
    bad = runner.invoke(cli.main, ["verify", str(out)])
    assert bad.exit_code != 0 and "sha256" in bad.output


def test_issue14_defaults_give_a_new_config_hash():
    # the hash of RunConfig() before the field-of-view model and the edge-run check: shards made with it must
    # not be resumed into a run of the new defaults
    assert RunConfig().hash != "f25fd92f1505ba8b"
    assert RunConfig().hash != RunConfig(pseudo=dataclasses.replace(RunConfig().pseudo, edge_run_max=1.0)).hash


def test_cut_rule_is_set_by_the_cli_recorded_per_image_and_part_of_the_config(tmp_path):
    from pipeline.pseudomask.cut import CUT_LADDER

    # the hash of RunConfig() before the learned cut: its shards must not be resumed into a run of the new default
    assert RunConfig().hash != "2df78de0e5e68620"
    data = good_folder(tmp_path / "data", 3)
    seen = {}
    for rule in ("fixed", "learned"):
        out = tmp_path / rule
        result = CliRunner().invoke(cli.main, ["pseudomasks", "--data", str(data), "--out", str(out), "--size", "64",
                                               "--cut", rule, "--no-progress"])
        assert result.exit_code == 0, result.output
        manifest = json.loads((out / "manifest.json").read_text())
        with ShardReader(find_shards(out)[0]) as shard:
            seen[rule] = (shard.attrs["config_hash"], shard.diagnostics["threshold"])
        assert manifest["config"]["pseudo"]["cut_rule"] == rule
    assert seen["fixed"][0] != seen["learned"][0]
    assert np.all(seen["fixed"][1] == np.float32(0.3))
    assert all(min(abs(t - c) for c in CUT_LADDER) < 1e-6 for t in seen["learned"][1])
    with pytest.raises(ValueError, match="another configuration"):
        run_pseudomasks(data, tmp_path / "fixed", config=RunConfig(size=64), progress=False)


def test_one_thread_limits_every_pool_and_restores_it():
    from threadpoolctl import threadpool_info

    from pipeline.run import _one_thread

    before = [p["num_threads"] for p in threadpool_info()]
    for _ in range(2):  # the second time reuses the cached controller
        with _one_thread():
            assert all(p["num_threads"] == 1 for p in threadpool_info())
        assert [p["num_threads"] for p in threadpool_info()] == before
