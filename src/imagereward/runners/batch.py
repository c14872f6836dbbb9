"""Resumable batch jobs: a JSONL file of (prompt, image) records in, one result line per record out.

Every input record gets exactly one output line, in input order, keyed by its
line number in the input (written as ``"line"``), so records that repeat a
prompt and image are each scored. A record whose image is missing or cannot be
decoded gets an ``"error"`` instead of a ``"reward"``; the rest of its batch is
scored as usual. Results are appended and flushed batch by batch, so a job that
is interrupted (Ctrl-C, a crash, a kill) resumes where it stopped. A resumed job may
also retry its errors (an image that was missing and is there now): their records are
taken out of the output, which a complete copy replaces in one rename, and their pairs
are scored again and appended.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Set

from ..errors import InputError, JobFileError
from ..items import score_items

logger = logging.getLogger(__name__)

Record = Dict[str, Any]
# Fields the job writes; an input record's own values for them are not copied.
RESULT_FIELDS = ("line", "reward", "error")


@dataclass
class JobStats:
    scored: int = 0  # rewards written by this run
    failed: int = 0  # error records written by this run
    skipped: int = 0  # records already in the output (resume)
    errors: int = 0  # error records for this input in the whole output
    retried: int = 0  # error records taken out of the output to be scored again


def read_records(path: str) -> List[Record]:
    """Records of a JSONL input, each with string ``prompt`` and ``image`` and its ``line``."""
    if not os.path.isfile(path):
        raise JobFileError(f"input file not found: {path}")
    records = []
    with open(path, "r", encoding="utf-8") as handle:
        for number, text in enumerate(handle, 1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise JobFileError(f"{path} line {number}: not valid JSON ({error})") from None
            if not (
                isinstance(record, dict)
                and isinstance(record.get("prompt"), str)
                and isinstance(record.get("image"), str)
            ):
                raise JobFileError(f"{path} line {number}: expected an object with string 'prompt' and 'image'")
            record = {k: v for k, v in record.items() if k not in RESULT_FIELDS}
            record["line"] = number
            records.append(record)
    return records


def read_done(path: str) -> Dict[int, bool]:
    """``input line -> has_error`` for the records of an existing output.

    A last line cut short by an interruption is removed from the file.
    """
    if not os.path.isfile(path):
        return {}
    with open(path, "rb") as handle:
        data = handle.read()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        logger.info("%s: dropping an incomplete last line", path)
        with open(path, "r+b") as handle:
            handle.truncate(complete)
    done: Dict[int, bool] = {}
    for number, text in enumerate(data[:complete].decode("utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
            line = record["line"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise JobFileError(f"{path} line {number}: not a scores record; is the output the right file?") from None
        if not isinstance(line, int):
            raise JobFileError(f"{path} line {number}: 'line' is not an input line number")
        done[line] = "error" in record
    return done


def drop_error_records(path: str) -> int:
    """Take the error records out of an output that :func:`read_done` has read (and so
    checked), so that their pairs are scored again; the number taken out. The records kept
    are copied as they are, line for line, to a file beside it (beside the file a symbolic
    link points to) with the same permissions, which then replaces it (an interruption
    leaves the output whole)."""
    target = os.path.realpath(path)
    dropped = 0
    temp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.tmp-{os.getpid()}")
    try:
        with open(target, "r", encoding="utf-8") as source, open(temp, "w", encoding="utf-8") as copy:
            for text in source:
                if text.strip() and "error" in json.loads(text):
                    dropped += 1
                else:
                    copy.write(text)
            copy.flush()
            os.fsync(copy.fileno())
        if dropped:
            shutil.copymode(target, temp)
            os.replace(temp, target)
    finally:
        if os.path.exists(temp):
            os.remove(temp)
    return dropped


def chunks(items: List[Any], size: int) -> Iterator[List[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def score_records(scorer: Any, records: List[Record], image_root: str = "") -> List[Record]:
    """One result per record, in order: a ``reward`` or, for a bad item, an ``error``
    (the item pipeline isolates bad items; the rest of the batch is scored together)."""
    results = [dict(record) for record in records]
    paths = [os.path.join(os.path.expanduser(image_root), os.path.expanduser(r["image"])) for r in records]
    for result, value in zip(results, score_items(scorer, [r["prompt"] for r in results], paths)):
        if isinstance(value, InputError):
            result["error"] = str(value) or type(value).__name__
        else:
            result["reward"] = float(value)
    return results


@dataclass
class BatchJob:
    input_path: str
    output_path: str
    image_root: str = ""
    batch_size: int = 16
    resume: bool = False
    retry_errors: bool = False  # with resume: score the pairs of error records again
    progress: bool = True

    def run(self, load_scorer: Callable[[], Any]) -> JobStats:
        """Score every pending record; the model is loaded only if something is left to do.

        On ``KeyboardInterrupt`` the results written so far stay in the output and the
        interruption propagates.
        """
        records = read_records(self.input_path)
        stats = JobStats()
        done = read_done(self.output_path) if self.resume else {}
        if self.retry_errors and any(done.values()):
            stats.retried = drop_error_records(self.output_path)
            done = {line: False for line, failed in done.items() if not failed}
        if not self.resume and os.path.exists(self.output_path):
            open(self.output_path, "w").close()
        known: Set[int] = {r["line"] for r in records}
        stats.skipped = sum(1 for line in done if line in known)
        stats.errors = sum(1 for line, failed in done.items() if failed and line in known)
        todo = [r for r in records if r["line"] not in done]
        if todo:
            self._score_all(load_scorer(), todo, stats, total=len(records))
        stats.errors += stats.failed
        return stats

    def _score_all(self, scorer: Any, todo: List[Record], stats: JobStats, total: int) -> None:
        from ..progress import progress

        os.makedirs(os.path.dirname(os.path.abspath(self.output_path)), exist_ok=True)
        bar = progress(total, "pair", "scoring", self.progress, initial=total - len(todo))
        try:
            with open(self.output_path, "a", encoding="utf-8") as output:
                for batch in chunks(todo, self.batch_size):
                    results = score_records(scorer, batch, self.image_root)
                    output.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
                    output.flush()
                    os.fsync(output.fileno())
                    failed = sum("error" in r for r in results)
                    stats.failed += failed
                    stats.scored += len(results) - failed
                    bar.update(len(results))
        finally:
            bar.close()
