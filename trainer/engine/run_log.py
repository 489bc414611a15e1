"""Run metrics: one JSON object per line in ``log.jsonl``, mirrored to TensorBoard when it is installed."""
from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


class RunLog:
    """Append metric records to ``out_dir/log.jsonl`` (flushed per line, so a crash loses nothing written).

    Numeric fields of records that carry a ``step`` also go to TensorBoard (``out_dir/tb``) when the
    ``tensorboard`` package is importable. Disabled on non-main distributed ranks.
    """

    def __init__(self, out_dir: str | Path, *, enabled: bool = True, name: str = "log.jsonl"):
        self.enabled = enabled
        self.path = Path(out_dir) / name
        self._fh = open(self.path, "a", encoding="utf-8") if enabled else None
        self._tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional: only when tensorboard is installed

                self._tb = SummaryWriter(str(Path(out_dir) / "tb"))
            except ImportError:
                log.debug("tensorboard not installed: metrics go to %s only", self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        try:
            self._fh.write(json.dumps(record, default=str) + "\n")
            self._fh.flush()
        except OSError as exc:  # e.g. a full disk: name the file (a failed write names none)
            exc.filename = exc.filename or str(self.path)
            raise
        if self._tb is not None and "step" in record:
            prefix = "epoch/" if record.get("event") == "epoch" else "train/"
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self._tb.add_scalar(prefix + key, value, record["step"])

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_log(path: str | Path) -> list[dict]:
    """Every record of a ``log.jsonl``."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
