"""One rule for every command that writes a folder (``common.guard.output_folder``): it never replaces a file
no run of the tool wrote, one run at a time, and a killed run's temporary files are removed; and no reader uses a
shards folder while its ``pseudomasks`` run is still writing it (round 3, items 1, 3 and 6, and the
pretrain-while-pseudomasks defect)."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cli
from common import guard
from common.guard import FolderLock, GuardError, output_folder
from pipeline.shards import ShardRecord, write_shard
from trainer.train import finetune as finetune_module

REPO = Path(__file__).resolve().parents[2]
PREFIX = "edgedino: error: "


def one_line(result, *needles: str) -> str:
    errors = [ln for ln in result.output.splitlines() if ln.startswith(PREFIX)]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def invoke(*args: str):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- the rule itself ----------------------------------------------------------------------------------------

def test_a_folder_with_files_no_run_wrote_is_refused_before_anything_is_created(tmp_path):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "a_segmentation.png").write_bytes(b"an expert's mask")
    (out / "notes.txt").write_text("not ours either, but not in the way")
    before = snapshot(out)
    with pytest.raises(GuardError, match=r"already holds 1 file\(s\) this command did not write "
                                         r"\(a_segmentation.png\); choose an empty folder, or move those files away"):
        with output_folder(out, command="predict", names=["a_segmentation.png", "b_segmentation.png"]):
            pytest.fail("the block ran")
    assert snapshot(out) == before  # not even a lock file or a ledger


def test_a_rerun_replaces_its_own_files_and_removes_what_a_killed_run_left(tmp_path):
    out = tmp_path / "out"
    with output_folder(out, command="predict", names=["a.png"]):
        (out / "a.png").write_bytes(b"first")
    stale = out / ".a.png.k3j9x0qz.partial"  # what atomic_write leaves when the run is killed mid-write
    stale.write_bytes(b"half")
    someone_elses = out / ".b.png.k3j9x0qz.partial"  # not a name the runs here write: left alone
    someone_elses.write_bytes(b"?")
    with output_folder(out, command="predict", names=["a.png"]):
        assert not stale.exists()
        (out / "a.png").write_bytes(b"second")
    assert (out / "a.png").read_bytes() == b"second" and someone_elses.read_bytes() == b"?"


def test_a_second_run_into_a_busy_folder_is_refused_in_one_line(tmp_path):
    out = tmp_path / "out"
    with output_folder(out, command="finetune", names=["model.pt"]):
        with pytest.raises(GuardError, match=rf"another run is writing into this folder \(finetune pid "
                                             rf"{os.getpid()}\)"):
            with output_folder(out, command="finetune", names=["model.pt"]):
                pytest.fail("two runs in one folder")
    with output_folder(out, command="finetune", names=["model.pt"]):  # free again
        pass


def test_a_run_folder_of_an_older_edgedino_is_adopted_by_the_same_command_only(tmp_path):
    """Before ledgers, pretrain locked its folder: its checkpoint is its own (a resume goes on); to another
    command the same file is foreign."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint-latest.pt").write_bytes(b"an old run's checkpoint")
    (out / guard.LOCK_NAME).write_text("pretrain pid 12345")
    with pytest.raises(GuardError, match="did not write"):
        with output_folder(out, command="finetune", names=["checkpoint-latest.pt"]):
            pass
    with output_folder(out, command="pretrain", names=["checkpoint-latest.pt"]) as ledger:
        assert "checkpoint-latest.pt" in ledger.names


# --- item 1: predict over another data set's expert masks ---------------------------------------------------

def test_predict_into_a_foreign_masks_folder_keeps_every_file_byte_identical(tmp_path, tiny_model_pt, make_labelled):
    ours, other = make_labelled(tmp_path / "ours", 4), make_labelled(tmp_path / "other", 4)  # same ids
    before = snapshot(other)
    result = invoke("predict", "--model", tiny_model_pt, "--data", ours, "--out", other / "masks", "--device", "cpu",
                    "--no-progress")
    one_line(result, f"{other / 'masks'}: --out already holds 4 file(s) this command did not write",
             "L00_segmentation.png")
    assert snapshot(other) == before


def test_predict_reruns_into_its_own_folder_and_cleans_a_killed_runs_partials(tmp_path, tiny_model_pt,
                                                                         make_labelled):
    data = make_labelled(tmp_path / "data", 3)
    out = tmp_path / "pred"
    args = ["predict", "--model", tiny_model_pt, "--data", data, "--out", out, "--device", "cpu", "--no-progress"]
    assert invoke(*args).exit_code == 0
    first = (out / "L00_segmentation.png").read_bytes()
    (out / ".L01_segmentation.png.ab12cd34.partial").write_bytes(b"killed mid-write")
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert (out / "L00_segmentation.png").read_bytes() == first
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".edgedino-written.json",
                                                                              ".edgedino.lock"]


def test_predict_names_each_skipped_image_once(tmp_path, tiny_model_pt, make_labelled):
    data = make_labelled(tmp_path / "data", 2)
    (data / "images" / "L99.png").write_bytes(b"not a png")
    result = invoke("predict", "--model", tiny_model_pt, "--data", data, "--out", tmp_path / "pred", "--device", "cpu",
                    "--no-progress")
    lines = [ln for ln in result.output.splitlines() if "L99.png" in ln]
    assert result.exit_code == cli.EXIT_REJECTS and len(lines) == 1, result.output
    assert lines[0].startswith(f"skipped {data / 'images' / 'L99.png'}: not a readable image")


# --- item 3: two fine-tunes into one folder -----------------------------------------------------------------

def test_two_concurrent_finetunes_into_one_folder_exactly_one_refuses(tmp_path, monkeypatch, make_labelled):
    data = make_labelled(tmp_path / "data", 12)
    out = tmp_path / "ft"
    config = finetune_module.FinetuneConfig(init="scratch", arch="vit_tiny_patch16_224", img_size=32, patch_size=8,
                                            iters=2, batch_size=2, eval_every=1, decoder_hidden=16)
    training, go_on = threading.Event(), threading.Event()
    real_train = finetune_module._train

    def train_after_the_second_run_tried(*args, **kwargs):
        if not training.is_set():  # the first run waits inside its training for the second one to try
            training.set()
            go_on.wait(120)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(finetune_module, "_train", train_after_the_second_run_tried)
    outcome = {}

    def first_run():
        try:
            outcome["first"] = finetune_module.finetune(data, 1.0, out, config=dataclasses.replace(config, seed=1),
                                                        device="cpu", progress=False)
        except Exception as exc:  # reported below
            outcome["first"] = exc

    thread = threading.Thread(target=first_run)
    thread.start()
    try:
        assert training.wait(300), "the first run never started training"
        with pytest.raises(GuardError, match=r"another run is writing into this folder \(finetune pid "):
            finetune_module.finetune(data, 1.0, out, config=dataclasses.replace(config, seed=2), device="cpu",
                                     progress=False)
    finally:
        go_on.set()
        thread.join(300)
    assert isinstance(outcome["first"], finetune_module.FinetuneResult), outcome["first"]
    assert json.loads((out / "subset.json").read_text())["seed"] == 1  # the first run's files, untouched
    assert torch.load(out / "model.pt", weights_only=True)["extra"]["config"]["seed"] == 1


def test_finetune_never_replaces_a_file_no_run_wrote(tmp_path, monkeypatch, make_labelled):
    data = make_labelled(tmp_path / "data", 12)
    out = tmp_path / "ft"
    out.mkdir()
    (out / "metrics.json").write_text("someone's results")
    monkeypatch.setattr(finetune_module, "_train", lambda *a, **k: pytest.fail("trained into a foreign folder"))
    config = finetune_module.FinetuneConfig(init="scratch", arch="vit_tiny_patch16_224", img_size=32, patch_size=8,
                                            decoder_hidden=16)
    with pytest.raises(GuardError, match=r"\(metrics.json\)"):
        finetune_module.finetune(data, 1.0, out, config=config, device="cpu", progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
    assert (out / "metrics.json").read_text() == "someone's results"


# --- readers of a shards folder whose pseudomasks run is alive -----------------------------------------------

def shards(folder: Path, n: int = 8, s: int = 32) -> Path:
    records = []
    for i in range(n):
        disc = np.zeros((s, s), bool)
        disc[8:24, 6 + i % 4:22 + i % 4] = True
        records.append(ShardRecord(id=f"S{i:03d}", path=f"/gone/S{i:03d}.jpg", orig_shape=(48, 64),
                                   image=np.where(disc[..., None], 80, 200).astype(np.uint8).repeat(3, 2),
                                   hair_mask=np.zeros((s, s), bool), prob=disc.astype(np.float32),
                                   pseudo_mask=disc, no_lesion=False, diagnostics={"confidence": 0.9}))
    write_shard(folder / "shard-00000.h5", records, size=s, config_json="{}", config_hash="h",
                planned_ids=[r.id for r in records], rejects=[], versions={})
    return folder


@pytest.fixture
def live_run(tmp_path):
    """A shards folder whose lock is held by another live process (as by a running pseudomasks); yields
    ``(folder, process)``; the process is killed afterwards."""
    folder = shards(tmp_path / "shards")
    code = ("import sys, time; from common.guard import FolderLock\n"
            f"with FolderLock({str(folder)!r}, command='pseudomasks'):\n"
            "    print('locked', flush=True); time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        yield folder, child
    finally:
        child.kill()
        child.wait()


def test_every_reader_refuses_a_shards_folder_while_its_run_is_alive(tmp_path, live_run, make_labelled):
    folder, child = live_run
    pid = child.pid
    data = make_labelled(tmp_path / "data", 12)
    tiny = ["--img-size", "32", "--local-size", "16", "--batch-size", "2", "--out-dim", "16", "--num-workers", "0",
            "--epochs", "1", "--preset", "cpu", "--device", "cpu", "--no-progress"]
    expected = f"{folder}: a pseudomasks run (pid {pid}) is still writing these shards"
    commands = {
        "pretrain": ["pretrain", "--shards", folder, "--out", tmp_path / "pre", *tiny],
        "pretrain one shard file": ["pretrain", "--shards", folder / "shard-00000.h5", "--out", tmp_path / "pre",
                                    *tiny],
        "export": ["export", "--shards", folder, "--out", tmp_path / "png"],
        "inspect": ["inspect", folder],
        "verify": ["verify", folder],
        "finetune --pseudo-shards": ["finetune", "--data", data, "--frac", "1", "--init", "scratch", "--arch",
                                     "vit_tiny_patch16_224", "--img-size", "32", "--iters", "1", "--preset", "cpu",
                                     "--device", "cpu", "--no-progress", "--pseudo-shards", folder,
                                     "--out", tmp_path / "ft"],
        "table --shards": ["table", "--data", data, "--shards", folder, "--out", tmp_path / "table", "--methods",
                           "ours", "--fracs", "0.5", "--seeds", "1", "--preset", "cpu", "--device", "cpu",
                           "--no-progress"],
    }
    for name, args in commands.items():
        one_line(invoke(*args), expected)
    for made in ("pre", "png", "ft", "table"):
        assert not (tmp_path / made).exists(), made


def test_a_dead_runs_lock_is_no_obstacle(tmp_path, live_run):
    folder, child = live_run
    child.send_signal(signal.SIGKILL)  # the run dies: the kernel drops its lock, the lock file stays
    child.wait()
    assert (folder / guard.LOCK_NAME).read_text() == f"pseudomasks pid {child.pid}"
    assert FolderLock.holder(folder) is None
    result = invoke("export", "--shards", folder, "--out", tmp_path / "png")
    assert result.exit_code == 0 and len(list((tmp_path / "png").glob("*_segmentation.png"))) == 8, result.output


# --- every writer: a busy folder, a file it did not write -----------------------------------------------------

def writer_args(command: str, tmp_path: Path, out: Path, model: Path, make_labelled) -> list:
    """The arguments of a small run of ``command`` into ``out`` (inputs made under ``tmp_path``)."""
    data = tmp_path / "data"
    if not data.exists():
        make_labelled(data, 12)
    if command in ("export", "pretrain") and not (tmp_path / "shards").exists():
        shards(tmp_path / "shards")
    tiny = ["--preset", "cpu", "--device", "cpu", "--no-progress"]
    return {
        "pseudomasks": ["pseudomasks", "--data", data, "--size", "32", "--no-progress"],
        "export": ["export", "--shards", tmp_path / "shards"],
        "predict": ["predict", "--model", model, "--data", data, "--device", "cpu", "--no-progress"],
        "finetune": ["finetune", "--data", data, "--frac", "1", "--init", "scratch", "--arch", "vit_tiny_patch16_224",
                     "--img-size", "32", "--iters", "1", *tiny],
        "pretrain": ["pretrain", "--shards", tmp_path / "shards", "--img-size", "32", "--local-size", "16",
                     "--batch-size", "2", "--out-dim", "16", "--num-workers", "0", "--epochs", "1", *tiny],
        "table": ["table", "--data", data, "--methods", "scratch", "--fracs", "0.5", "--seeds", "1", *tiny],
        "synth": ["synth", "--n", "2", "--size", "64x48"],
    }[command] + ["--out", out]


@pytest.mark.parametrize("command", ["pseudomasks", "export", "predict", "finetune", "pretrain", "table", "synth"])
def test_every_writer_refuses_a_folder_another_run_is_writing(tmp_path, tiny_model_pt, command, make_labelled):
    out = tmp_path / "out"
    out.mkdir()
    with FolderLock(out, command="someone"):
        line = one_line(invoke(*writer_args(command, tmp_path, out, tiny_model_pt, make_labelled)),
                        f"{out}: another run is writing into this folder (someone pid {os.getpid()})")
    assert line.endswith("wait for it to finish or choose another --out")
    assert sorted(p.name for p in out.iterdir()) == [guard.LOCK_NAME]  # nothing written meanwhile


@pytest.mark.parametrize("command, theirs", [("pseudomasks", "manifest.json"), ("pseudomasks", "shard-00000.h5"),
                                             ("pretrain", "export.pt"), ("table", "results.md"),
                                             ("finetune", "predictions/L00_segmentation.png")])
def test_every_writer_leaves_a_file_it_did_not_write_alone(tmp_path, tiny_model_pt, command, theirs, make_labelled):
    out = tmp_path / "out"
    (out / theirs).parent.mkdir(parents=True)
    (out / theirs).write_bytes(b"someone else's file")
    args = writer_args(command, tmp_path, out, tiny_model_pt, make_labelled)
    if command == "finetune":  # with L00 a test image, finetune would write its prediction
        args[args.index("--data") + 1] = make_labelled(tmp_path / "train", 12, first=20)
        args += ["--test-data", make_labelled(tmp_path / "test", 2, first=0)]
    before = snapshot(out)
    one_line(invoke(*args), f"{out}: --out already holds 1 file(s) this command did not write ({theirs})")
    assert snapshot(out) == before
