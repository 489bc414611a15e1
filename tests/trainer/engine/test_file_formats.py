"""``model.pt`` and ``export.pt`` hold tensors and plain values only: no pickled class or function of this project.

So they load with plain ``torch.load(weights_only=True)``, and moving a module (``trainer/finetune.py`` to
``trainer/train/finetune.py``, say) cannot make an existing file unreadable: nothing in it names a module path.
"""
from __future__ import annotations

import dataclasses
import json
import pickletools
import zipfile
from pathlib import Path

import pytest
import torch

from trainer.engine.export import export_model
from trainer.models.segmenter import build_seg_model, load_seg_model, save_seg_model
from trainer.models.unet import UNet
from trainer.train.config import PretrainConfig
from trainer.train.finetune import FinetuneConfig

TINY = PretrainConfig(arch="vit_tiny_patch16_224", img_size=32, out_dim=64, head_hidden=32, bottleneck_dim=16,
                      decoder_hidden=16, patch_size=8)


def pickled_globals(path: Path) -> set[str]:
    """``module.name`` of every class or function the pickle inside a (zip-format) torch file refers to."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":  # protocol 2 (torch.save's): arg is "module name"
            found.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":  # protocol 4+: module and name are the last two strings pushed
            found.add(".".join(strings[-2:]))
        elif isinstance(arg, str):
            strings.append(arg)
    return found


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("formats")
    torch.manual_seed(0)
    export = export_model(TINY.build_model(), TINY, out / "export.pt", step=3)
    seg, info = build_seg_model("pretrain", checkpoint=export)
    config = FinetuneConfig(decoder_hidden=16)  # stored as finetune stores it: JSON values
    vit = save_seg_model(seg, info, out / "model.pt", extra={
        "frac": 0.1, "labelled_ids": ["a", "b"], "config": json.loads(json.dumps(dataclasses.asdict(config)))})
    unet = save_seg_model(UNet((4, 8)), {"img_size": 32}, out / "model-unet.pt")
    return {"export.pt": export, "model.pt": vit, "model-unet.pt": unet}


@pytest.mark.parametrize("name", ["export.pt", "model.pt", "model-unet.pt"])
def test_a_saved_file_names_no_project_module_and_loads_weights_only(files, name):
    names = pickled_globals(files[name])
    assert names, "the pickle was not read (no tensor found)"
    assert not {n for n in names if n.split(".")[0] in ("trainer", "pipeline", "common", "cli", "__main__")}
    assert {n.split(".")[0] for n in names} <= {"torch", "collections"}, names
    state = torch.load(files[name], weights_only=True, map_location="cpu")
    assert state["format"] in ("edgedino-export/1", "edgedino-model/1")
    model, info = load_seg_model(files[name])
    assert info["img_size"] == 32 and isinstance(model, torch.nn.Module)


def test_the_check_sees_a_pickled_project_class(tmp_path):
    torch.save({"config": TINY}, tmp_path / "bad.pt")  # a dataclass instance, not its asdict: names its module
    assert "trainer.train.config.PretrainConfig" in pickled_globals(tmp_path / "bad.pt")
    with pytest.raises(Exception, match="weights_only"):
        torch.load(tmp_path / "bad.pt", weights_only=True)
