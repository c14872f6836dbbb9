"""The resumable batch job behind ``imagereward score --input pairs.jsonl --output scores.jsonl``."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Set, Tuple

from .common import EXIT_INPUT, EXIT_INTERRUPTED, CliError

logger = logging.getLogger("imagereward")

Key = Tuple[str, str]
# Errors that belong to one input (unreadable image, bad array): the job records
# them and goes on. Anything else (out of memory, a broken model) stops the job.
PER_PAIR_ERRORS = (ValueError, OSError, TypeError)


@dataclass
class JobStats:
    scored: int = 0  # rewards written by this run
    failed: int = 0  # error records written by this run
    skipped: int = 0  # pairs already in the output (--resume) or repeated in the input
    errors: int = 0  # error records for this input in the whole output


def read_pairs(path: str) -> List[Dict[str, Any]]:
    """Records of a JSONL input; each needs string ``prompt`` and ``image`` fields."""
    if not os.path.isfile(path):
        raise CliError(f"input file not found: {path}", EXIT_INPUT)
    records = []
    with open(path, "r", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise CliError(f"{path} line {number}: not valid JSON ({error})", EXIT_INPUT) from None
            if not (
                isinstance(record, dict)
                and isinstance(record.get("prompt"), str)
                and isinstance(record.get("image"), str)
            ):
                raise CliError(
                    f"{path} line {number}: expected an object with string 'prompt' and 'image'",
                    EXIT_INPUT,
                )
            records.append(record)
    return records


def read_done(path: str) -> Dict[Key, bool]:
    """``(prompt, image) -> has_error`` for the records of an existing output.

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
    done: Dict[Key, bool] = {}
    for number, line in enumerate(data[:complete].decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            key = (record["prompt"], record["image"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CliError(
                f"{path} line {number}: not a scores record; is --output the right file?", EXIT_INPUT
            ) from None
        done[key] = "error" in record
    return done


def chunks(items: List[Any], size: int) -> Iterator[List[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class BatchJob:
    input_path: str
    output_path: str
    image_root: str = ""
    batch_size: int = 16
    resume: bool = False
    progress: bool = True

    def image_path(self, image: str) -> str:
        return os.path.join(os.path.expanduser(self.image_root), os.path.expanduser(image))

    def run(self, load_scorer: Callable[[], Any]) -> JobStats:
        """Score every pending pair; the model is loaded only if something is left to do."""
        pairs = read_pairs(self.input_path)
        done = read_done(self.output_path) if self.resume else {}
        if not self.resume and os.path.exists(self.output_path):
            open(self.output_path, "w").close()
        stats = JobStats()
        seen: Set[Key] = set()
        todo = []
        for record in pairs:
            key = (record["prompt"], record["image"])
            if key in seen:
                stats.skipped += 1
                continue
            seen.add(key)
            if key in done:
                stats.skipped += 1
                stats.errors += int(done[key])
            else:
                todo.append(record)
        if todo:
            self._score_all(load_scorer(), todo, stats, total=len(seen))
        stats.errors += stats.failed
        return stats

    def _score_all(self, scorer: Any, todo: List[Dict[str, Any]], stats: JobStats, total: int) -> None:
        from tqdm.auto import tqdm

        directory = os.path.dirname(os.path.abspath(self.output_path))
        os.makedirs(directory, exist_ok=True)
        bar = tqdm(
            total=total, initial=total - len(todo), unit="pair", desc="scoring",
            disable=not self.progress, dynamic_ncols=True, smoothing=0.1,
        )
        try:
            with open(self.output_path, "a", encoding="utf-8") as output:
                for batch in chunks(todo, self.batch_size):
                    results = self._score_batch(scorer, batch)
                    output.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
                    output.flush()
                    os.fsync(output.fileno())
                    failed = sum("error" in r for r in results)
                    stats.failed += failed
                    stats.scored += len(results) - failed
                    bar.update(len(results))
        except KeyboardInterrupt:
            raise CliError(
                f"interrupted: {stats.scored + stats.failed} new results are saved in "
                f"{self.output_path}; run again with --resume to continue",
                EXIT_INTERRUPTED,
            ) from None
        finally:
            bar.close()

    def _score_batch(self, scorer: Any, batch: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """One result per record, in order; a bad image only fails its own pair."""
        results: List[Dict[str, Any]] = [
            {k: v for k, v in record.items() if k not in ("reward", "error")} for record in batch
        ]
        pending = []
        for result in results:
            path = self.image_path(result["image"])
            if os.path.isfile(path):
                pending.append((result, path))
            else:
                result["error"] = f"image not found: {path}"
        if not pending:
            return results
        try:
            rewards = scorer.score_batch([r["prompt"] for r, _ in pending], [p for _, p in pending])
            for (result, _), reward in zip(pending, rewards):
                result["reward"] = float(reward)
        except PER_PAIR_ERRORS:
            for result, path in pending:  # find the culprit(s): one pair at a time
                try:
                    result["reward"] = float(scorer.score_batch([result["prompt"]], [path])[0])
                except PER_PAIR_ERRORS as error:
                    result["error"] = str(error) or type(error).__name__
        return results
