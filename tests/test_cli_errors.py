"""The one top-level error handler: every known failure is one line naming the file and the problem, exit 1
(2 for usage, 130 when interrupted); ``-v`` shows the traceback."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import cli
import pipeline.run as run_module

PREFIX = "edgedino: error: "


def invoke(args: list[str]):
    result = CliRunner().invoke(cli.main, args)
    return result, result.stderr if hasattr(result, "stderr") else result.output


def assert_one_line(result, *needles: str, code: int = 1) -> str:
    text = result.output  # click's runner mixes stderr in by default
    lines = [ln for ln in text.strip().splitlines() if ln.startswith(PREFIX)]
    assert result.exit_code == code, text
    assert len(lines) == 1 and "Traceback" not in text, text
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "weights_only" not in text
    return lines[0]


@pytest.fixture
def data(tmp_path) -> Path:
    folder = tmp_path / "data" / "images"
    folder.mkdir(parents=True)
    (folder.parent / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(np.clip(rng.normal(150, 30, (48, 64, 3)), 0, 255).astype(np.uint8)).save(folder / f"I{i}.png")
        Image.fromarray(np.zeros((48, 64), np.uint8)).save(folder.parent / "masks" / f"I{i}_segmentation.png")
    return folder.parent


class Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/issue11_pwned",))


@pytest.mark.parametrize("kind", ["truncated", "foreign", "malicious"])
def test_a_bad_checkpoint_is_one_line_and_never_runs_code(tmp_path, data, kind):
    path = tmp_path / "export.pt"
    if kind == "truncated":
        torch.save({"a": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "foreign":
        path.write_bytes(b"GIF89a not a checkpoint at all")
    else:
        Path("/tmp/issue11_pwned").unlink(missing_ok=True)
        torch.save({"x": Boom()}, path)
    result, _ = invoke(["finetune", "--data", str(data), "--frac", "1", "--checkpoint", str(path),
                        "--out", str(tmp_path / "ft"), "--device", "cpu", "--no-progress"])
    line = assert_one_line(result, str(path))
    assert ("possibly code" in line) == (kind == "malicious")
    assert not Path("/tmp/issue11_pwned").exists()


def test_cuda_without_cuda_is_one_line(tmp_path, data, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result, _ = invoke(["finetune", "--data", str(data), "--frac", "1", "--init", "scratch",
                        "--out", str(tmp_path / "ft"), "--device", "cuda", "--no-progress"])
    assert_one_line(result, "CUDA")


def test_out_that_is_a_file_or_under_a_file_and_a_missing_exclude_folder(tmp_path, data):
    (tmp_path / "file").write_text("x")
    result, _ = invoke(["pseudomasks", "--data", str(data), "--out", str(tmp_path / "file" / "sub"), "--no-progress"])
    assert_one_line(result, str(tmp_path / "file"))
    result, _ = invoke(["pseudomasks", "--data", str(data), "--out", str(tmp_path / "out"),
                        "--exclude-from", str(tmp_path / "nowhere"), "--no-progress"])
    assert_one_line(result, str(tmp_path / "nowhere"), "does not exist")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left"), (errno.EACCES, "permission denied"),
                                         (errno.EROFS, "read-only")])
def test_disk_full_and_permission_errors_are_one_line(tmp_path, data, monkeypatch, code, words):
    def failing_write(self, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(Path, "write_bytes", failing_write)  # where write_shard hands the file to the disk
    result, _ = invoke(["pseudomasks", "--data", str(data), "--out", str(tmp_path / "out"), "--size", "32",
                        "--no-progress"])
    assert_one_line(result, str(tmp_path / "out" / "shard-00000.h5"), words)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".partial")]


def test_interrupt_is_one_line_with_exit_130_and_verbose_shows_the_traceback(tmp_path, data, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "run_pseudomasks", interrupted)
    result, _ = invoke(["pseudomasks", "--data", str(data), "--out", str(tmp_path / "out"), "--no-progress"])
    assert_one_line(result, "interrupted", code=130)

    def broken(*args, **kwargs):
        raise ValueError(f"{data}: something specific")

    monkeypatch.setattr(run_module, "run_pseudomasks", broken)
    quiet, _ = invoke(["pseudomasks", "--data", str(data), "--out", str(tmp_path / "out"), "--no-progress"])
    assert_one_line(quiet, f"{data}: something specific")
    loud = CliRunner().invoke(cli.main, ["-v", "pseudomasks", "--data", str(data), "--out", str(tmp_path / "out"),
                                         "--no-progress"])
    assert loud.exit_code == 1 and "Traceback" in loud.output and f"{PREFIX}{data}: something specific" in loud.output


def test_usage_errors_keep_exit_2(tmp_path, data):
    result = CliRunner().invoke(cli.main, ["table", "--data", str(data), "--out", str(tmp_path / "t"),
                                           "--fracs", "0.5,nan"])
    assert result.exit_code == 2 and "(0, 1]" in result.output
    assert not (tmp_path / "t").exists()


def test_export_into_the_expert_masks_is_refused(tmp_path, data):
    masks = data / "masks"
    before = {p.name: p.read_bytes() for p in masks.iterdir()}
    run = CliRunner().invoke(cli.main, ["pseudomasks", "--data", str(data), "--out", str(tmp_path / "shards"),
                                        "--size", "32", "--no-progress"])
    assert run.exit_code in (0, cli.EXIT_REJECTS), run.output
    result, _ = invoke(["export", "--shards", str(tmp_path / "shards"), "--out", str(masks)])
    assert_one_line(result, str(masks), "did not write", "--overwrite")
    assert {p.name: p.read_bytes() for p in masks.iterdir()} == before


def test_a_damaged_chunk_during_pretraining_is_one_line_naming_the_shard(tmp_path):
    import h5py

    from pipeline.shards import ShardRecord, write_shard

    s = 32
    records = [ShardRecord(id=f"S{i}", path="/x.jpg", orig_shape=(s, s), image=np.full((s, s, 3), 100 + i, np.uint8),
                           hair_mask=np.zeros((s, s), bool), prob=np.zeros((s, s), np.float32),
                           pseudo_mask=np.ones((s, s), bool), no_lesion=False, diagnostics={}) for i in range(4)]
    shard = tmp_path / "shards" / "shard-00000.h5"
    write_shard(shard, records, size=s, config_json="{}", config_hash="h", planned_ids=[r.id for r in records],
                rejects=[], versions={})
    with h5py.File(shard, "r") as f:
        offset = f["image"].id.get_chunk_info(2).byte_offset
    raw = bytearray(shard.read_bytes())
    raw[offset + 10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    result, _ = invoke(["pretrain", "--shards", str(shard.parent), "--out", str(tmp_path / "run"), "--preset", "cpu",
                        "--epochs", "1", "--img-size", "32", "--local-size", "16", "--batch-size", "2",
                        "--out-dim", "16", "--num-workers", "1", "--device", "cpu", "--no-progress"])
    assert_one_line(result, str(shard), "sample 2 cannot be read", "verify")


def test_synth_never_writes_into_a_real_data_set(tmp_path, data):
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    result, _ = invoke(["synth", "--out", str(data), "--n", "2", "--size", "64x48"])
    assert_one_line(result, str(data), "synth did not write")
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    fresh = tmp_path / "synth"
    for n in (2, 3):  # its own folder: a rerun (with more images) is fine
        assert CliRunner().invoke(cli.main, ["synth", "--out", str(fresh), "--n", str(n), "--size", "64x48"]).exit_code == 0
    assert len(list((fresh / "images").iterdir())) == 3


def test_report_files_never_replace_a_file_the_tool_did_not_write(tmp_path, data):
    """inspect --png and evaluate --json refuse to replace someone's file, and replace their own on a rerun."""
    run = CliRunner().invoke(cli.main, ["pseudomasks", "--data", str(data), "--out", str(tmp_path / "shards"),
                                        "--size", "32", "--no-progress"])
    assert run.exit_code in (0, cli.EXIT_REJECTS), run.output
    reports = tmp_path / "reports"
    reports.mkdir()
    theirs_png, theirs_json = reports / "sheet.png", reports / "scores.json"
    theirs_png.write_bytes(b"someone's picture")
    theirs_json.write_text("someone's notes")
    result, _ = invoke(["inspect", str(tmp_path / "shards"), "--png", str(theirs_png)])
    assert_one_line(result, str(theirs_png), "did not write")
    result, _ = invoke(["evaluate", "--pred", str(data / "masks"), "--truth", str(data), "--json", str(theirs_json)])
    assert_one_line(result, str(theirs_json), "did not write")
    assert theirs_png.read_bytes() == b"someone's picture" and theirs_json.read_text() == "someone's notes"
    ours = reports / "ours.json"
    for _ in range(2):  # a rerun replaces the file it wrote itself
        result, _ = invoke(["evaluate", "--pred", str(data / "masks"), "--truth", str(data), "--json", str(ours)])
        assert result.exit_code == 0, result.output
    assert '"mean"' in ours.read_text() or "jaccard" in ours.read_text()
