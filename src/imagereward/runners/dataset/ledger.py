"""The output folder of a job: one parquet part file per fragment, and what the job is.

A part file appears only complete (written under a temporary name, flushed to disk,
then renamed), so its presence is the record that its fragment is done; a crash
leaves at most a temporary file, which the next run removes. ``_imagereward_job.json``
holds the job's fragments and models, so that a rerun into the same folder is known
to be the same job and a different one is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Set

import pyarrow as pa

from .inputs import DatasetInputError

JOB_FILE = "_imagereward_job.json"
TEMP_PREFIX = ".tmp-"
META_KEY = b"imagereward"


@dataclass
class Totals:
    fragments: int = 0
    rows_in: int = 0  # rows the fragments hold
    rows_out: int = 0  # rows in the part files
    errors: int = 0  # rows with an error


class Ledger:
    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(os.path.expanduser(directory))
        self.job: Dict[str, Any] = {}

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def open(self, job: Dict[str, Any]) -> None:
        """Start or continue ``job`` here; refuse a folder holding another job's output."""
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise DatasetInputError(f"output is not a folder: {self.directory}")
        os.makedirs(self.directory, exist_ok=True)
        saved = self._read_job()
        if saved is None:
            if any(n.startswith("part-") for n in os.listdir(self.directory)):
                raise DatasetInputError(f"{self.directory} holds part files but no {JOB_FILE}; "
                                        "give an empty or new --output folder")
            self.job = dict(job)
            self._write_job()
        else:
            differences = job_differences(saved, job)
            if differences:
                raise DatasetInputError(
                    f"{self.directory} holds the output of a different job ({'; '.join(differences)}); "
                    "give a new --output folder, or rerun with the same options to continue it")
            self.job = saved
        for name in os.listdir(self.directory):
            if name.startswith(TEMP_PREFIX):  # left by a run that died while writing
                os.remove(self.path(name))

    def get(self, key: str) -> Optional[Any]:
        return self.job.get(key)

    def set(self, key: str, value: Any) -> None:
        self.job[key] = value
        self._write_job()

    def done(self) -> Set[str]:
        return {n for n in os.listdir(self.directory) if n.startswith("part-") and n.endswith(".parquet")}

    def write_part(self, name: str, table: pa.Table, fragment: str, errors: int) -> None:
        """Write ``table`` as part file ``name`` atomically, recording its fragment and counts."""
        import pyarrow.parquet as pq

        record = json.dumps({"fragment": fragment, "rows": table.num_rows, "errors": errors})
        table = table.replace_schema_metadata({META_KEY: record.encode("utf-8")})
        temp = self.path(f"{TEMP_PREFIX}{os.getpid()}-{name}")
        with open(temp, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.path(name))
        _fsync_dir(self.directory)

    def drop_failed(self, names: Iterable[str]) -> List[str]:
        """Remove the part files among ``names`` that hold rows with an error, so that their
        fragments are scored again (every row of them); the names removed."""
        import pyarrow.parquet as pq

        dropped = []
        for name in sorted(names):
            record = json.loads((pq.read_metadata(self.path(name)).metadata or {}).get(META_KEY, b"{}"))
            if int(record.get("errors", 0)) > 0:
                os.remove(self.path(name))
                dropped.append(name)
        if dropped:
            _fsync_dir(self.directory)
        return dropped

    def totals(self, names: Iterable[str]) -> Totals:
        """Counts over the part files ``names`` (all fragments of the job), from their footers."""
        import pyarrow.parquet as pq

        totals = Totals()
        for name in names:
            meta = pq.read_metadata(self.path(name))
            record = json.loads((meta.metadata or {}).get(META_KEY, b"{}"))
            totals.fragments += 1
            totals.rows_in += int(record.get("rows", 0))
            totals.rows_out += meta.num_rows
            totals.errors += int(record.get("errors", 0))
        return totals

    def _read_job(self) -> Optional[Dict[str, Any]]:
        path = self.path(JOB_FILE)
        if not os.path.isfile(path):
            return None
        try:
            with open(path, "r", encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, json.JSONDecodeError) as error:
            raise DatasetInputError(f"unreadable job file {path}: {error}") from None

    def _write_job(self) -> None:
        temp = self.path(f"{TEMP_PREFIX}{os.getpid()}-{JOB_FILE}")
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump(self.job, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.path(JOB_FILE))
        _fsync_dir(self.directory)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fragment_files(plan: Dict[str, Any]) -> List[str]:
    return sorted({key.split("@")[0] for key, _ in plan.get("fragments", [])})


def _listed(items: List[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def job_differences(saved: Dict[str, Any], job: Dict[str, Any]) -> List[str]:
    """What makes ``job`` another job than the ``saved`` one, in words (empty: the same job)."""
    found: List[str] = []
    before, now = saved.get("plan", {}), job["plan"]
    if before.get("layout") != now.get("layout"):
        found.append(f"input layout {before.get('layout')} then, {now.get('layout')} now")
    if before.get("columns") != now.get("columns"):
        changed = [k for k in now.get("columns", {}) if before.get("columns", {}).get(k) != now["columns"][k]]
        found.append("input columns differ: " + ", ".join(
            f"{k} {before.get('columns', {}).get(k)!r} then, {now['columns'][k]!r} now" for k in changed))
    files_before, files_now = _fragment_files(before), _fragment_files(now)
    if files_before != files_now:
        added = sorted(set(files_now) - set(files_before))
        gone = sorted(set(files_before) - set(files_now))
        parts = ([f"new: {_listed(added)}"] if added else []) + ([f"gone: {_listed(gone)}"] if gone else [])
        found.append("other input files (" + "; ".join(parts) + ")")
    elif before.get("fragments") != now.get("fragments"):
        found.append("the input splits into other fragments (another --fragment-rows, or the files changed)")
    models_before = [m.get("name") for m in saved.get("models", [])]
    models_now = [m.get("name") for m in job["models"]]
    if models_before != models_now:
        found.append(f"models {', '.join(models_before)} then, {', '.join(models_now)} now")
    else:
        for old, new in zip(saved.get("models", []), job["models"]):
            for field in ("files", "options", "dtype"):
                if old.get(field) != new.get(field):
                    found.append(f"{new['name']}: other {field} ({old.get(field)} then, {new.get(field)} now)")
    return found
