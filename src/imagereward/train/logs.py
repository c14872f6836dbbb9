"""The training log: one JSON object per line, per optimizer step and per validation."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

LOG_FILE = "train_log.jsonl"


def read_log(path: str) -> List[Dict[str, Any]]:
    with open(path, "r", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


class TrainLog:
    """Appends records to ``path``. A fresh run starts an empty file; a resumed run keeps
    the step and validation records up to the step it resumes from, and drops the rest."""

    def __init__(self, path: str, resume_step: Optional[int] = None) -> None:
        self.path = path
        kept: List[Dict[str, Any]] = []
        if resume_step is not None and os.path.isfile(path):
            kept = [r for r in read_log(path)
                    if r.get("type") in ("train", "valid") and r["step"] <= resume_step]
        with open(path, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in kept)

    def write(self, record: Dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
