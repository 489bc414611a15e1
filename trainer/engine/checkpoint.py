"""Atomic training checkpoints, the one safe torch-file loader, weight export, and RNG-state capture.

A checkpoint is written to a temporary sibling, fsynced, then renamed (``common.atomic.atomic_write``): after
a crash the folder holds either the previous checkpoint or the new one, never a truncated file.
Checkpoints hold only tensors, numbers, strings, lists, tuples and dicts (convert configs with
``dataclasses.asdict`` and paths with ``str``), so they load with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import argparse
import io
import random
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from common.atomic import atomic_write
from common.guard import GuardError, bounded_number, check_plain_name

__all__ = [
    "CheckpointError",
    "MAX_INPUT_SIZE",
    "MAX_WIDTH",
    "require_keys",
    "check_model_fields",
    "torch_load",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_path",
    "latest_checkpoint",
    "prune_checkpoints",
    "rng_state",
    "set_rng_state",
]

CHECKPOINT_GLOB = "checkpoint_*.pt"
_STEP_RE = re.compile(r"^checkpoint_(\d+)\.pt$")
#: The largest square input (px) a model file may ask for (img_size, and the test-time size derived from it).
MAX_INPUT_SIZE = 4096
#: The widest layer (channels) a model file may ask for (a decoder's hidden width, a U-Net level).
MAX_WIDTH = 16384


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """``torch.save(state)`` to ``path`` atomically (temporary file in the same folder, fsync, rename).

    On any exception (including a failure to pickle ``state``) the previous file at ``path`` is untouched and
    no temporary file is left behind. Returns ``path``.
    """
    path = Path(path)
    if not isinstance(state, Mapping):
        raise TypeError(f"state: expected a dict, got {type(state).__name__}")
    with atomic_write(path, "wb") as fh:
        sink = _KeepWriteError(fh)
        try:
            torch.save(dict(state), sink)
        except RuntimeError:
            if sink.error is not None:  # torch reports a failed write (a full disk) as its own RuntimeError
                raise sink.error from None
            raise
    return path


class _KeepWriteError(io.RawIOBase):
    """A file for ``torch.save`` that keeps the ``OSError`` of a failed write (ENOSPC: the disk is full), which
    torch itself turns into an ``inline_container.cc`` RuntimeError that names neither the file nor the cause."""

    def __init__(self, fh) -> None:
        super().__init__()
        self.fh, self.error = fh, None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise


def require_keys(state: Any, keys: tuple[str, ...], path: str | Path, *, what: str) -> Mapping[str, Any]:
    """``state`` (a loaded file) when it is a dict holding every one of ``keys``; else :class:`CheckpointError`
    naming the file, ``what`` it should be and the keys it lacks."""
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not {what}")
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a complete {what}: {', '.join(map(repr, missing))} missing (damaged, or "
                              "written by another program)")
    return state


def check_model_fields(state: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """Bounds-check the fields of a model file (``model.pt``, ``export.pt``) that decide what is built, before
    anything is: ``arch`` and ``decoder_arch`` plain names, ``img_size`` in [16, :data:`MAX_INPUT_SIZE`],
    ``patch_size`` None or in [1, img_size], ``decoder_hidden`` in [0, :data:`MAX_WIDTH`], ``step`` in [0, 10^12],
    ``decoder_skip`` a bool (or 0/1), each when present. Returns the checked values; raises
    :class:`CheckpointError` naming the file and the field."""
    out: dict[str, Any] = {}
    try:
        for key in ("arch", "decoder_arch"):
            if key in state:
                out[key] = check_plain_name(state[key], what=key, source=path)
        if "img_size" in state:
            out["img_size"] = bounded_number(state["img_size"], lo=16, hi=MAX_INPUT_SIZE, what="img_size",
                                             source=path)
        if state.get("patch_size") is not None:
            out["patch_size"] = bounded_number(state["patch_size"], lo=1, hi=out.get("img_size", MAX_INPUT_SIZE),
                                               what="patch_size", source=path)
        if "decoder_hidden" in state:
            out["decoder_hidden"] = bounded_number(state["decoder_hidden"], lo=0, hi=MAX_WIDTH,
                                                   what="decoder_hidden", source=path)
        if "step" in state:
            out["step"] = bounded_number(state["step"], lo=0, hi=10**12, what="step", source=path)
        if "decoder_skip" in state:
            skip = state["decoder_skip"]
            out["decoder_skip"] = bool(skip if isinstance(skip, bool) else
                                       bounded_number(skip, lo=0, hi=1, what="decoder_skip", source=path))
    except GuardError as exc:  # the message names the file and the field
        raise CheckpointError(str(exc)) from None
    return out


def torch_load(path: str | Path, *, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """A checkpoint file's contents (``.safetensors`` or a torch file), the one loader of torch files here.

    Torch files load with ``weights_only=True``: no arbitrary code runs from a file found elsewhere (DINO's
    checkpoints also hold an ``argparse.Namespace``, allowed). ``mmap`` maps a (zip-format) torch file instead
    of reading it: cheap when only a few keys are looked at. ``.safetensors`` files load on the CPU.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # optional dependency, only for .safetensors files

            return load_file(str(path), device="cpu")
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except OSError:  # missing, a folder, no permission: the caller's message names it
        raise
    except Exception as exc:
        raise CheckpointError(_unloadable(path, exc)) from None


class CheckpointError(ValueError):
    """A torch or safetensors file that cannot be loaded; the message names it (never suggests unsafe loading)."""


def _unloadable(path: Path, exc: Exception) -> str:
    text = str(exc)
    if "GLOBAL" in text:  # the weights-only unpickler met a class or function: possibly code
        return (f"{path}: holds objects other than tensors and plain values (possibly code), which edgedino "
                "never loads; use a checkpoint of weights only")
    if "weights_only" in text or "Weights only" in text:
        # torch's own text suggests weights_only=False, i.e. running code from the file: never pass that on.
        return f"{path}: not a loadable checkpoint (truncated, or not a torch file)"
    first = text.strip().splitlines()[0][:160] if text.strip() else type(exc).__name__
    return f"{path}: not a loadable checkpoint, truncated or not a torch file ({first})"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (through :func:`torch_load`: weights only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no file at {path}")
    try:
        return torch_load(path, map_location=map_location)
    except Exception as exc:  # corrupt file or a non-tensor object
        raise RuntimeError(f"checkpoint {path}: cannot load ({type(exc).__name__}: {exc})") from exc


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    """``out_dir/checkpoint_<step:08d>.pt``: the name :func:`latest_checkpoint` looks for."""
    if step < 0:
        raise ValueError(f"step: expected >= 0, got {step}")
    return Path(out_dir) / f"checkpoint_{step:08d}.pt"


def _steps(out_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for p in out_dir.glob(CHECKPOINT_GLOB):
        m = _STEP_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The ``checkpoint_<step>.pt`` in ``out_dir`` with the highest step, or None (temporary files ignored)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return None
    found = _steps(out_dir)
    return found[-1][1] if found else None


def prune_checkpoints(out_dir: str | Path, keep: int = 2, *, keep_every: int = 0) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints (and those whose step is a multiple of ``keep_every``
    when > 0). Returns the deleted paths."""
    if keep < 1:
        raise ValueError(f"keep: expected >= 1, got {keep}")
    found = _steps(Path(out_dir))
    deleted = []
    for step, p in found[:-keep]:
        if keep_every > 0 and step % keep_every == 0:
            continue
        p.unlink()
        deleted.append(p)
    return deleted


def rng_state() -> dict[str, Any]:
    """The global RNG states of Python, NumPy, torch (CPU) and every CUDA device when CUDA is initialised.

    Stored in ``weights_only``-loadable form (the NumPy key as an int64 tensor).
    """
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore states captured by :func:`rng_state` (CUDA only when present in ``state`` and available)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state({
        "bit_generator": npst["bit_generator"],
        "state": {"key": np.asarray(npst["key"], dtype=np.int64).astype(np.uint32), "pos": int(npst["pos"])},
        "has_gauss": int(npst["has_gauss"]),
        "gauss": float(npst["gauss"]),
    })
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
        else:
            for i, s in enumerate(cuda_states[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s.cpu(), i)
