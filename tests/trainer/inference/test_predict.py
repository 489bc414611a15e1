"""The saved segmenter (model.pt) and ``predict``: bit-exact round trip, same masks as ``finetune``, bad images."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import cli
from pipeline.synth import write_synthetic_dataset
from trainer.engine.export import export_model
from trainer.inference.predict import predict_folder
from trainer.models.segmenter import build_seg_model, load_seg_model, save_seg_model
from trainer.train.config import PretrainConfig
from trainer.train.finetune import MODEL, FinetuneConfig, finetune

TINY_PRE = PretrainConfig(arch="vit_tiny_patch16_224", patch_size=8, img_size=32, out_dim=64, head_hidden=64,
                          bottleneck_dim=32, decoder_hidden=16, drop_path=0.0)
TINY_FT = FinetuneConfig(iters=4, batch_size=4, eval_every=2, decoder_hidden=16)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic_dataset(root, 24, seed=2, size=(96, 72), progress=False)
    return root


@pytest.fixture(scope="module")
def finetuned(synth, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ft")
    torch.manual_seed(0)
    export_model(TINY_PRE.build_model(), TINY_PRE, tmp / "export.pt", step=3)
    out = tmp / "run"
    finetune(synth, 0.3, out, checkpoint=tmp / "export.pt", config=TINY_FT, device="cpu", progress=False)
    return out


@pytest.mark.parametrize("kind", ["conv", "ilka"])
def test_model_pt_round_trips_bit_exactly(tmp_path, kind):
    torch.manual_seed(1)
    model, info = build_seg_model("scratch", arch="vit_tiny_patch16_224", img_size=32, decoder_hidden=16,
                                  decoder_arch=kind, decoder_skip=True, patch=8)
    for p in model.parameters():  # weights unlike any fresh init, so a rebuilt model cannot pass by chance
        p.data.add_(torch.randn_like(p) * 0.01)
    save_seg_model(model, info, tmp_path / MODEL, extra={"note": "x"})
    again, meta = load_seg_model(tmp_path / MODEL)
    assert meta["patch_size"] == 8 and meta["decoder_skip"] and meta["decoder_arch"] == kind
    assert meta["img_size"] == 32 and meta["normalisation"]["mean"] == [0.485, 0.456, 0.406]
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():  # the same weights (above, bit for bit) predict the same, to float rounding
        torch.testing.assert_close(again(x), model.eval()(x), rtol=0, atol=1e-6)


def test_predict_equals_finetune_predictions(finetuned, synth, tmp_path):
    assert (finetuned / MODEL).is_file()
    result = predict_folder(finetuned / MODEL, synth, tmp_path / "pred", probabilities=True,
                            overlay=tmp_path / "sheet.png", device="cpu", progress=False)
    assert len(result.written) == 24 and not result.failed and (tmp_path / "sheet.png").stat().st_size > 0
    written = sorted((finetuned / "predictions").glob("*_segmentation.png"))
    assert written
    for path in written:
        assert (tmp_path / "pred" / path.name).read_bytes() == path.read_bytes(), path.name
    assert (tmp_path / "pred" / written[0].name.replace("_segmentation", "_probability")).is_file()


def test_predict_names_and_skips_a_corrupt_image(finetuned, synth, tmp_path):
    folder = tmp_path / "new"
    folder.mkdir()
    images = sorted((synth / "images").glob("*.jpg"))[:3]
    for p in images:
        shutil.copy(p, folder / p.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all" * 10)
    out = tmp_path / "out"
    run = CliRunner().invoke(cli.main, ["predict", "--model", str(finetuned / MODEL), "--data", str(folder),
                                        "--out", str(out), "--device", "cpu", "--no-progress"])
    assert run.exit_code == cli.EXIT_REJECTS, run.output
    assert "broken.jpg" in run.output and "skipped 1 unreadable" in run.output
    # the masks, and the writer rule's record of them and lock (common.guard.output_folder)
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{p.stem}_segmentation.png" for p in images]
                                                           + [".edgedino-written.json", ".edgedino.lock"])
    for p in images:  # the masks have each image's original size
        mask = np.asarray(Image.open(out / f"{p.stem}_segmentation.png"))
        assert mask.shape == (72, 96) and set(np.unique(mask)) <= {0, 255}


def test_predict_refuses_to_write_into_its_data_folder(finetuned, synth):
    with pytest.raises(ValueError, match="inside"):
        predict_folder(finetuned / MODEL, synth, synth / "pred", device="cpu", progress=False)


def test_an_export_is_a_zero_label_segmenter(tmp_path):
    torch.manual_seed(0)
    export_model(TINY_PRE.build_model(), TINY_PRE, tmp_path / "export.pt", step=3)
    model, info = load_seg_model(tmp_path / "export.pt")
    assert info["decoder_skip"] and model.backbone.patch_embed.patch_size[0] == 8
    with pytest.raises(ValueError, match="not an edgedino model"):
        torch.save({"format": "something"}, tmp_path / "other.pt")
        load_seg_model(tmp_path / "other.pt")


def test_predict_segments_at_the_scale_finetune_used(finetuned, synth, tmp_path, monkeypatch):
    import json

    import trainer.inference.segment as pr  # predict_folder segments through segment_images
    from trainer.inference.segment import predict_size

    assert [predict_size(96, 2.0), predict_size(224, 2.0), predict_size(96, 1.0), predict_size(100, 1.0),
            predict_size(8, 1.0), predict_size(96, 1.5)] == [192, 448, 96, 96, 16, 144]
    metrics = json.loads((finetuned / "metrics.json").read_text())
    assert metrics["predict_size"] == 64 and metrics["config"]["predict_scale"] == 2.0  # TINY models train at 32
    sizes = []
    real = pr.predict_image
    monkeypatch.setattr(pr, "predict_image", lambda *a, size, **k: sizes.append(size) or real(*a, size=size, **k))
    one = sorted((synth / "images").glob("*.jpg"))[:1]
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(one[0], folder / one[0].name)
    predict_folder(finetuned / MODEL, folder, tmp_path / "a", device="cpu", progress=False)
    predict_folder(finetuned / MODEL, folder, tmp_path / "b", device="cpu", progress=False, predict_scale=1.0)
    # a model.pt older than the option was predicted at its training size: so it still is
    model, info = load_seg_model(finetuned / MODEL)
    extra = dict(info["extra"])
    extra["config"] = {k: v for k, v in extra["config"].items() if k != "predict_scale"}
    save_seg_model(model, {k: v for k, v in info.items() if k != "extra"}, tmp_path / "old.pt", extra=extra)
    predict_folder(tmp_path / "old.pt", folder, tmp_path / "c", device="cpu", progress=False)
    assert sizes == [64, 32, 32]


def test_predict_with_the_per_image_choice_equals_finetune_and_lists_the_confidence(synth, tmp_path):
    import csv
    import dataclasses

    test = tmp_path / "test"
    (test / "images").mkdir(parents=True)
    (test / "masks").mkdir()
    for p in sorted((synth / "images").glob("*.jpg"))[:6]:
        shutil.copy(p, test / "images" / p.name)
        shutil.copy(synth / "masks" / f"{p.stem}_segmentation.png", test / "masks")
    (test / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg" * 8)
    torch.manual_seed(0)
    export_model(TINY_PRE.build_model(), TINY_PRE, tmp_path / "export.pt", step=3)
    clean = tmp_path / "clean"
    shutil.copytree(test, clean)
    (clean / "images" / "broken.jpg").unlink()
    config = dataclasses.replace(TINY_FT, fuse=True)
    assert config.fusion == "choice"  # the default
    finetune(synth, 0.3, tmp_path / "ft", checkpoint=tmp_path / "export.pt", test_data=[clean], config=config,
             device="cpu", progress=False)
    metrics = __import__("json").loads((tmp_path / "ft" / "metrics.json").read_text())
    assert {r["source"] for r in metrics["per_image"]} <= {"walker", "both", "student"}
    result = predict_folder(tmp_path / "ft" / MODEL, test, tmp_path / "pred", probabilities=True, device="cpu",
                            progress=False)
    assert len(result.written) == 6 and [Path(p).name for p, _ in result.failed] == ["broken.jpg"]
    for path in sorted((tmp_path / "ft" / "predictions").glob("*_segmentation.png")):
        assert (tmp_path / "pred" / path.name).read_bytes() == path.read_bytes(), path.name
    with open(tmp_path / "pred" / "confidence.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in metrics["per_image"])
    confidences = [float(r["confidence"]) for r in rows]
    assert confidences == sorted(confidences)  # least confident first
    by_id = {r["id"]: r for r in metrics["per_image"]}
    for r in rows:
        assert r["source"] == by_id[r["id"]]["source"]
        assert float(r["agreement"]) == pytest.approx(by_id[r["id"]]["agreement"], abs=1e-4)
    fixed = predict_folder(tmp_path / "ft" / MODEL, clean, tmp_path / "fixed", probabilities=True, device="cpu",
                           progress=False, fusion="fixed")
    assert len(fixed.written) == 6 and not (tmp_path / "fixed" / "confidence.csv").exists()
