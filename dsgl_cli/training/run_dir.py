"""The run directory: resolved config, log file, metrics.jsonl, checkpoints and curves."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import yaml

from dsgl_cli.errors import DsglError

CHECKPOINT = "checkpoint.pth"
BEST = "model_best.pth"
METRICS = "metrics.jsonl"


def choose_run_dir(logs_dir: Optional[Path], dataset: str, resume: Optional[Path]) -> Path:
    """Where this run writes; never one that already holds another run's checkpoint."""
    if logs_dir is None and resume is not None:
        return resume if resume.is_dir() else resume.parent
    if logs_dir is not None:
        if (logs_dir / CHECKPOINT).exists() and resume is None:
            raise DsglError(
                f"--logs-dir {logs_dir} already holds a run; continue it with --resume "
                f"{logs_dir / CHECKPOINT} or choose another --logs-dir"
            )
        return logs_dir
    base = Path("runs") / dataset
    candidate, n = base, 1
    while (candidate / CHECKPOINT).exists() or (candidate / METRICS).exists():
        n += 1
        candidate = base.with_name(f"{dataset}-{n}")
    return candidate


class RunDir:
    """Writes what a run leaves behind; only this class knows the file names."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    def save_checkpoint(self, payload: dict[str, Any], best: bool = False) -> Path:
        """Write the last (or best) checkpoint atomically; only rank 0's run dir is enabled."""
        from dsgl_cli.models.checkpoint import save_checkpoint

        path = self.best if best else self.checkpoint
        if self.enabled:
            save_checkpoint(path, payload)
        return path

    def write_config(self, config: dict[str, Any]) -> None:
        if self.enabled:
            (self.path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def log(self, line: str) -> None:
        if self.enabled:
            with open(self.path / "train.log", "a", encoding="utf-8") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {line}\n")

    def append_metrics(self, row: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.metrics_file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.exists():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, after_epoch: int) -> None:
        """On resume, drop rows of epochs the resumed run will redo."""
        if not self.enabled or not self.metrics_file.exists():
            return
        keep = [r for r in self.read_metrics() if r.get("epoch", 0) <= after_epoch]
        self.metrics_file.write_text("".join(json.dumps(r) + "\n" for r in keep))
