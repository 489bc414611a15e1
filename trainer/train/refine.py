"""Self-training rounds: the student relabels the pool, and the next student learns from the new labels
(docs/METHOD.md, section 6).

Round 1 is stage 1 plus ``pretrain``: the walker's pseudo-masks and the student trained on them. Each further
round ``r`` (``round-r/`` under the output folder):

1. ``round-r/shards``: stage 1's shards relabelled by the previous round's student
   (:func:`trainer.inference.relabel.relabel`: the per-image choice between the student and the walker, with
   the agreement-based confidence; the least confident images get training weight 0);
2. ``round-r/pretrain``: the previous round's run continued on those shards (``PretrainConfig.init_from``: its
   student, teacher and DINO centre; a fresh schedule of ``epochs`` epochs).

Every round relabels stage 1's own shards (the walker's evidence does not change; the student does). Each step
resumes like the command it is (``relabel`` keeps finished shards made by the same model, ``pretrain`` resumes
its checkpoint), so rerunning ``refine`` continues where it stopped, and a round whose first step was made
by another model is redone, never mixed.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from common.guard import check_out_dir, make_out_dir
from trainer.engine.checkpoint import load_checkpoint
from trainer.engine.export import EXPORT
from trainer.inference.relabel import RelabelConfig, relabel
from trainer.train.config import PretrainConfig
from trainer.train.pretrain import LATEST, pretrain, run_summary

log = logging.getLogger(__name__)

__all__ = ["RefineConfig", "RoundResult", "refine", "round_dir"]


@dataclass(frozen=True)
class RefineConfig:
    """``rounds``: rounds after the first (round 2 is the first relabelling); ``epochs``: epochs of each round's
    training; ``relabel``: how each round relabels (:class:`~trainer.inference.relabel.RelabelConfig`)."""

    rounds: int = 1
    epochs: int = 4
    relabel: RelabelConfig = field(default_factory=RelabelConfig)

    def __post_init__(self):
        if self.rounds < 1 or self.epochs < 1:
            raise ValueError(f"rounds and epochs: expected >= 1, got {self.rounds}, {self.epochs}")


@dataclass
class RoundResult:
    round: int
    shards: Path
    run: Path
    relabel_line: str
    summary: str


def first_run_config(run: str | Path) -> PretrainConfig:
    """The pretraining config of a run folder, as its latest checkpoint recorded it: every round trains with it
    (same architecture, presets and losses), with its own ``epochs`` and ``init_from``."""
    state = load_checkpoint(Path(run) / LATEST)
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise ValueError(f"{Path(run) / LATEST}: no pretraining config recorded; is it a 'pretrain' checkpoint?")
    return PretrainConfig.from_dict(state["config"])


def round_dir(out_dir: str | Path, r: int) -> Path:
    """The folder of round ``r`` (>= 2) under a ``refine`` output folder."""
    return Path(out_dir) / f"round-{r}"


def refine(shards: str | Path, first_run: str | Path, out_dir: str | Path, *,
           config: RefineConfig = RefineConfig(), device: str = "auto", exclude_ids: Iterable[str] = (),
           progress: bool = True) -> list[RoundResult]:
    """Run (or finish) ``config.rounds`` self-training rounds after the pretraining run ``first_run``.

    Parameters
    ----------
    shards : path
        Stage 1's shards (what ``first_run`` was trained on, or any pool of the same storage size).
    first_run : path
        The pretraining run folder of round 1 (its ``export.pt`` relabels round 2; its ``checkpoint-latest.pt``
        starts round 2's training).
    out_dir : path
        ``round-2/``, ``round-3/``, ... go here.
    exclude_ids : iterable of str
        Left out of every round's training (the leakage guard, as in ``pretrain``).
    """
    first_run, out_dir = Path(first_run), Path(out_dir)
    for name in (EXPORT, LATEST):
        if not (first_run / name).is_file():
            raise FileNotFoundError(f"{first_run / name}: missing; refine continues a finished 'pretrain' run "
                                    "(its export.pt and checkpoint-latest.pt)")
    out_dir = check_out_dir(out_dir, [shards, first_run], flat_inputs=True)
    pretrain_config = first_run_config(first_run)
    make_out_dir(out_dir)
    excluded = list(exclude_ids)
    results, previous = [], first_run
    for r in range(2, 2 + config.rounds):
        here = round_dir(out_dir, r)
        log.info("round %d: relabel %s with %s", r, shards, previous / EXPORT)
        summary = relabel(shards, previous / EXPORT, here / "shards", config=config.relabel, device=device,
                          progress=progress)
        log.info("%s", summary.line())
        round_config = dataclasses.replace(pretrain_config, epochs=config.epochs,
                                           init_from=str(previous / LATEST))
        log.info("round %d: train the next student into %s (%d epochs from %s)", r, here / "pretrain",
                 config.epochs, previous / LATEST)
        pretrain(here / "shards", here / "pretrain", round_config, device=device, exclude_ids=excluded,
                 progress=progress)
        results.append(RoundResult(r, here / "shards", here / "pretrain", summary.line(),
                                   run_summary(here / "pretrain")))
        previous = here / "pretrain"
    return results
