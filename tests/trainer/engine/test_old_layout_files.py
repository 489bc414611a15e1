"""Files written by the code before the layout moves still load and give the same results.

Two moves: the flat ``trainer/`` (commit 25530b0: ``trainer/seg_model.py``) into folders, and the loops at the top
of ``trainer/`` (commit 3f72ba7: ``trainer/pretrain.py``, ``trainer/finetune.py``) into ``train/``, ``inference/``
and ``eval/`` with the helpers of both stages in ``common/``. The old code is taken from the repository's own
history (``git archive``), run in a subprocess to write ``export.pt`` files (conv and ilka decoders), ``model.pt``
files (a ViT segmenter and a U-Net), a shard folder and the old code's predictions; the current code then loads
them and must predict the same logits, read the same shard contents and pass ``verify``. The files hold no module
path (``tests/trainer/engine/test_file_formats.py``), which is why a move cannot break them.
"""
from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.shards import ShardReader, find_shards, verify
from trainer.data.shard_dataset import ShardDataset
from trainer.engine.export import read_export
from trainer.models.segmenter import build_seg_model, load_seg_model

REPO = Path(__file__).resolve().parents[3]
OLD_COMMIT = "25530b0"  # the last commit of the flat trainer/ layout

OLD_SCRIPT = r'''
import json, sys
from pathlib import Path
import numpy as np, torch
out = Path(sys.argv[1])
torch.set_num_threads(int(sys.argv[2]))  # the same thread count as the test: as few reordered float sums as we can
from pipeline.synth import write_synthetic_dataset
from pipeline.run import RunConfig, run_pseudomasks
from trainer.pretrain import PretrainConfig, export_model
from trainer.seg_model import build_seg_model
write_synthetic_dataset(out / "data", 3, seed=5, size=(96, 72), progress=False)
run_pseudomasks(out / "data", out / "shards", config=RunConfig(size=64), progress=False)
x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
for kind in ("conv", "ilka"):
    torch.manual_seed(7)
    config = PretrainConfig(arch="vit_tiny_patch16_224", img_size=32, out_dim=64, head_hidden=32, bottleneck_dim=16,
                            decoder_hidden=16, decoder=kind)
    model = config.build_model().eval()
    export_model(model, config, out / f"export-{kind}.pt", step=11)
    seg, _ = build_seg_model("pretrain", checkpoint=out / f"export-{kind}.pt")
    with torch.no_grad():
        np.save(out / f"logits-{kind}.npy", seg.eval()(x).numpy())
'''


PRE_MOVE_COMMIT = "3f72ba7"  # the last commit with the loops at the top of trainer/ and no common/

PRE_MOVE_SCRIPT = r'''
import sys
from pathlib import Path
import numpy as np, torch
out = Path(sys.argv[1])
torch.set_num_threads(int(sys.argv[2]))
from trainer.engine.export import export_model
from trainer.models.segmenter import build_seg_model, save_seg_model
from trainer.models.unet import UNet
from trainer.pretrain import PretrainConfig
x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
for kind in ("conv", "ilka"):
    torch.manual_seed(7)
    config = PretrainConfig(arch="vit_tiny_patch16_224", img_size=32, out_dim=64, head_hidden=32, bottleneck_dim=16,
                            decoder_hidden=16, decoder=kind, patch_size=8)
    export_model(config.build_model().eval(), config, out / f"export-{kind}.pt", step=11)
    seg, info = build_seg_model("pretrain", checkpoint=out / f"export-{kind}.pt")
    save_seg_model(seg, info, out / f"model-{kind}.pt", extra={"frac": 0.1, "config": {"fuse": True}})
    with torch.no_grad():
        np.save(out / f"logits-{kind}.npy", seg.eval()(x).numpy())
torch.manual_seed(7)
unet = UNet((4, 8))
save_seg_model(unet, {"img_size": 32}, out / "model-unet.pt")
with torch.no_grad():
    np.save(out / "logits-unet.npy", unet.eval()(x).numpy())
'''


def _written_by(commit: str, script: str, tmp: Path) -> tuple[Path, Path]:
    """``(code, out)``: the repository's ``pipeline`` and ``trainer`` at ``commit``, and what ``script`` wrote with
    them into ``out`` (run in a subprocess from the old code's folder, so that its packages are the ones imported)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit, "pipeline", "trainer"],
                             capture_output=True)
    assert archive.returncode == 0, (f"git archive {commit} failed (this test needs the repository history): "
                                     f"{archive.stderr.decode()}")
    code = tmp / "code"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(code, filter="data")
    out = tmp / "out"
    out.mkdir()
    run = subprocess.run([sys.executable, "-c", script, str(out), str(torch.get_num_threads())], cwd=code,
                         capture_output=True, text=True,
                         env={"PYTHONPATH": str(code), "PATH": "/usr/bin:/bin", "HOME": str(tmp)}, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return code, out


@pytest.fixture(scope="module")
def old_files(tmp_path_factory) -> Path:
    code, out = _written_by(OLD_COMMIT, OLD_SCRIPT, tmp_path_factory.mktemp("old-layout"))
    assert (code / "trainer" / "seg_model.py").is_file()  # really the old layout
    return out


@pytest.fixture(scope="module")
def pre_move_files(tmp_path_factory) -> Path:
    code, out = _written_by(PRE_MOVE_COMMIT, PRE_MOVE_SCRIPT, tmp_path_factory.mktemp("pre-move"))
    assert (code / "trainer" / "finetune.py").is_file() and not (code / "trainer" / "train").exists()
    return out


@pytest.mark.parametrize("kind", ["conv", "ilka"])
def test_old_export_loads_and_predicts_the_same(old_files, kind):
    export = read_export(old_files / f"export-{kind}.pt")
    assert export["decoder_arch"] == kind and export["step"] == 11
    seg, info = build_seg_model("pretrain", checkpoint=old_files / f"export-{kind}.pt")
    assert info["decoder_arch"] == kind
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = seg.eval()(x).numpy()
    # The old code ran in another process: its float sums may be ordered differently (CI saw 1e-6 apart on the
    # second image), so the logits must agree to 1e-5, far tighter than any wrongly loaded or rebuilt layer (0.01+).
    np.testing.assert_allclose(logits, np.load(old_files / f"logits-{kind}.npy"), rtol=0, atol=1e-5)


def test_old_shards_read_and_verify(old_files):
    shards = old_files / "shards"
    assert verify(shards) == []
    paths = find_shards(shards)
    assert len(paths) == 1
    with ShardReader(paths[0]) as reader:
        assert len(reader) == 3 and reader.config["size"] == 64
        assert reader.ids == ["SYN_0000000", "SYN_0000001", "SYN_0000002"]
        assert reader[0]["pseudo_mask"].shape == (64, 64) and set(np.unique(reader[0]["pseudo_mask"])) <= {0, 1}
    dataset = ShardDataset([shards])
    assert len(dataset) == 3
    item = dataset[0]
    assert tuple(item["image"].shape) == (3, 64, 64)


@pytest.mark.parametrize("kind", ["conv", "ilka"])
def test_pre_move_export_and_model_load_and_predict_the_same(pre_move_files, kind):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    expected = np.load(pre_move_files / f"logits-{kind}.npy")
    for name in (f"export-{kind}.pt", f"model-{kind}.pt"):
        model, info = load_seg_model(pre_move_files / name)
        assert info["decoder_arch"] == kind and info["img_size"] == 32
        with torch.no_grad():
            logits = model(x).numpy()
        # another process: float sums may be ordered differently (see above); a wrong layer is 0.01+ away
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5)
    _, info = load_seg_model(pre_move_files / f"model-{kind}.pt")
    assert info["extra"] == {"frac": 0.1, "config": {"fuse": True}}


def test_pre_move_unet_model_loads_and_predicts_the_same(pre_move_files):
    model, info = load_seg_model(pre_move_files / "model-unet.pt")
    assert info["arch"] == "unet"
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(x).numpy()
    np.testing.assert_allclose(logits, np.load(pre_move_files / "logits-unet.npy"), rtol=0, atol=1e-5)
