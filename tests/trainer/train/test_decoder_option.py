"""The decoder option and S^3-Net's aux terms through pretraining, export, resume, fine-tuning and the CLI."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from click.testing import CliRunner
from test_pretrain import TINY, shards  # noqa: F401  (the tiny shard fixture)

import cli
from trainer.engine.checkpoint import load_checkpoint, save_checkpoint
from trainer.engine.export import EXPORT, export_model, read_export
from trainer.engine.run_log import read_log
from trainer.models.decoders import EdgePath, ILKADecoder, SegDecoder
from trainer.models.segmenter import build_seg_model
from trainer.train.config import PretrainConfig
from trainer.train.finetune import FinetuneConfig
from trainer.train.pretrain import LATEST, pretrain

S3 = dataclasses.replace(TINY, epochs=1, picture_every=0, affine_weight=0.5, spatial_weight=2.0)


def _steps(out):
    return [r for r in read_log(out / "log.jsonl") if "loss" in r and "event" not in r]


def test_ilka_pretraining_logs_the_terms_exports_and_finetunes_from_it(shards, tmp_path):  # noqa: F811
    out = tmp_path / "ilka"
    config = dataclasses.replace(S3, decoder="ilka", picture_every=1)
    pretrain(shards, out, config, device="cpu", progress=False)
    assert (out / "pictures" / "epoch-0001.png").exists()  # the picture runs the teacher's ILKA decoder
    steps = _steps(out)
    assert len(steps) == 3
    for r in steps:
        assert 0 < r["affine"] < 1 and 0 < r["spatial"] < 1
        # the two terms ride on the L_seg ramp, times their weights
        expected = r["dino"] + r["lambda"] * (r["seg"] + 0.5 * r["affine"] + 2.0 * r["spatial"])
        assert r["loss"] == pytest.approx(expected, rel=1e-4)
    export = read_export(out / EXPORT)
    assert export["decoder_arch"] == "ilka"
    model, info = build_seg_model("pretrain", checkpoint=out / EXPORT, decoder_arch="conv")
    assert isinstance(model.decoder, ILKADecoder) and info["decoder_arch"] == "ilka"
    for name, value in model.decoder.state_dict().items():
        assert torch.equal(value, export["decoder"][name]), name
    fresh, _ = build_seg_model("pretrain", checkpoint=out / EXPORT, decoder="fresh")
    assert isinstance(fresh.decoder, ILKADecoder)
    assert export["decoder_skip"] and isinstance(fresh.decoder.edge, EdgePath)  # the default edge path
    assert not torch.equal(fresh.decoder.edge.out.weight, export["decoder"]["edge.out.weight"])
    with pytest.raises(ValueError, match=r"another architecture \(decoder: 'ilka' -> 'conv'\)"):
        pretrain(shards, out, dataclasses.replace(config, epochs=2, decoder="conv"), device="cpu", progress=False)


def test_old_checkpoints_resume_as_conv_and_terms_are_unscaled_without_distillation(shards, tmp_path):  # noqa: F811
    out = tmp_path / "conv"
    config = dataclasses.replace(S3, distill=False)
    pretrain(shards, out, config, device="cpu", progress=False)
    for r in _steps(out):
        assert "dino" not in r
        assert r["loss"] == pytest.approx(r["seg"] + 0.5 * r["affine"] + 2.0 * r["spatial"], rel=1e-4)
    state = load_checkpoint(out / LATEST)
    del state["config"]["decoder"]  # as written before the option existed
    save_checkpoint(out / LATEST, state)
    with pytest.raises(ValueError, match=r"decoder: 'conv' -> 'ilka'"):
        pretrain(shards, out, dataclasses.replace(config, epochs=2, decoder="ilka"), device="cpu", progress=False)
    again = pretrain(shards, out, dataclasses.replace(config, epochs=2), device="cpu", progress=False)
    assert again.resumed_from == 3 and again.step == 6


def test_ignored_without_the_decoder(shards, tmp_path, caplog):  # noqa: F811
    assert PretrainConfig().affine_weight == PretrainConfig().spatial_weight == 0.0  # off by default
    with caplog.at_level("WARNING"):
        config = dataclasses.replace(S3, lambda_seg=0.0)
    assert "lambda_seg 0 turns off: ignored" in caplog.text
    dino = pretrain(shards, tmp_path / "dino", config, device="cpu", progress=False)
    assert "affine" not in dino.last and "spatial" not in dino.last and "seg" not in dino.last


def test_config_validation():
    with pytest.raises(ValueError, match=r"decoder: expected one of \('conv', 'ilka'\), got 'unet'"):
        PretrainConfig(decoder="unet")
    with pytest.raises(ValueError, match="affine_weight: expected >= 0, got -1"):
        PretrainConfig(affine_weight=-1.0)
    with pytest.raises(ValueError, match="spatial_weight: expected >= 0, got nan"):
        PretrainConfig(spatial_weight=float("nan"))
    with pytest.raises(ValueError, match=r"decoder_arch: expected one of \('conv', 'ilka'\), got 'x'"):
        FinetuneConfig(decoder_arch="x")


def test_seg_model_decoder_arch_for_fresh_runs_and_old_exports(tmp_path):
    model, info = build_seg_model("scratch", arch="vit_tiny_patch16_224", img_size=32, decoder_arch="ilka",
                                  decoder_hidden=16)
    assert isinstance(model.decoder, ILKADecoder) and info["decoder_arch"] == "ilka"
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="decoder_arch: expected one of"):
        build_seg_model("scratch", arch="vit_tiny_patch16_224", img_size=32, decoder_arch="ILKA")
    config = dataclasses.replace(TINY, decoder="conv")
    path = export_model(config.build_model(), config, tmp_path / "export.pt", step=1)
    state = load_checkpoint(path)
    del state["decoder_arch"]  # an export written before the key existed
    save_checkpoint(path, state)
    model, info = build_seg_model("pretrain", checkpoint=path, decoder_arch="ilka")
    assert isinstance(model.decoder, SegDecoder) and info["decoder_arch"] == "conv"


def test_cli_passes_the_options(monkeypatch, tmp_path, shards):  # noqa: F811
    import trainer.train.finetune
    import trainer.train.pretrain

    seen = {}

    def fake_pretrain(shard_list, out, config, **kw):
        seen["pretrain"] = config
        raise ValueError("stop here")

    def fake_finetune(data, frac, out, *, config, **kw):
        seen["finetune"] = config
        raise ValueError("stop here")

    monkeypatch.setattr(trainer.train.pretrain, "pretrain", fake_pretrain)
    monkeypatch.setattr(trainer.train.finetune, "finetune", fake_finetune)
    runner = CliRunner()
    result = runner.invoke(cli.main, ["pretrain", "--shards", str(shards), "--out", str(tmp_path / "p"),
                                      "--preset", "cpu", "--decoder", "ilka", "--affine-weight", "0.25",
                                      "--spatial-weight", "1.5"])
    assert "stop here" in result.output
    assert (seen["pretrain"].decoder, seen["pretrain"].affine_weight, seen["pretrain"].spatial_weight) == \
        ("ilka", 0.25, 1.5)
    result = runner.invoke(cli.main, ["finetune", "--data", str(tmp_path), "--frac", "0.1", "--out",
                                      str(tmp_path / "f"), "--init", "scratch", "--decoder-arch", "ilka"])
    assert "stop here" in result.output and seen["finetune"].decoder_arch == "ilka"
    result = runner.invoke(cli.main, ["pretrain", "--shards", str(shards), "--out", str(tmp_path / "p"),
                                      "--decoder", "unet"])
    assert result.exit_code == 2 and "'unet' is not one of 'conv', 'ilka'" in result.output
