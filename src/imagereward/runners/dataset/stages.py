"""The two Ray Data stages of a job: decode on CPUs, score in stateful actors.

``decode_batch`` turns each row's encoded image into ``uint8`` pixels once per distinct
preprocessing (all current scorers share one 224 px chain, so normally once), or into
an ``error``; :class:`ScoreActor` loads every scorer once and scores the decoded rows.
Both take and return Arrow tables, so the input's own columns pass through untouched.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from ...spec import ModelSpec
from .inputs import ERROR, IMAGE_BYTES, IMAGE_PATH, INPUT_ERROR, PROMPT, read_image_bytes
from .models import worker_spec


def pixels_column(group: int) -> str:
    return f"_pixels_{group}"


def decode_batch(table: pa.Table, preprocess: Sequence[Dict[str, Any]]) -> pa.Table:
    """Add ``error`` and one pixel column per preprocessing (what
    :func:`imagereward.items.decode` makes: ``uint8 [3, S, S]``, ``float32`` for padding
    chains, each image's own ``[3, H, W]`` for native ones); drop the encoded bytes.

    A row whose image is missing, unreadable or corrupt gets zero pixels and its
    error text; any other exception fails the task (Ray retries it).
    """
    from ...config import PreprocessConfig
    from ...errors import InputError
    from ...items import decode, open_image
    from ...preprocess import ImagePreprocessor

    chains = [ImagePreprocessor(PreprocessConfig.from_dict(c)) for c in preprocess]
    count = table.num_rows
    pixels: List[List[Any]] = [[None] * count for _ in chains]
    errors: List[Optional[str]] = table.column(INPUT_ERROR).to_pylist()
    data = table.column(IMAGE_BYTES).to_pylist()
    paths = table.column(IMAGE_PATH).to_pylist()
    for row in range(count):
        if errors[row] is not None:
            continue
        name = paths[row] or f"the image of row {row}"
        try:
            payload = data[row] if data[row] is not None else read_image_bytes(paths[row])
            image = open_image(payload, name=name)
            for out, chain in zip(pixels, chains):
                out[row] = decode(chain, image, name=name).numpy()
        except InputError as error:
            errors[row] = str(error) or type(error).__name__
    table = table.drop_columns([IMAGE_BYTES, IMAGE_PATH, INPUT_ERROR])
    table = table.append_column(ERROR, pa.array(errors, pa.string()))
    for group, (column, chain) in enumerate(zip(pixels, chains)):
        table = table.append_column(pixels_column(group), _tensor_column(column, chain))
    return table


def _tensor_column(rows: List[Any], chain: Any) -> Any:
    """Decoded pixels as one Arrow tensor column (rows of an error get zeros): fixed-shape,
    or, where the chain keeps each image's own size, always variable-shaped (so that every
    block of the job has the same column type, whatever sizes it happens to hold)."""
    from ray.data.extensions import ArrowTensorArray, ArrowVariableShapedTensorArray

    filled = rows
    if not rows or any(row is None for row in rows):  # the chain's shape and dtype, for zeros
        blank = np.zeros_like(chain.to_pixels(Image.new("RGB", (28, 28))).numpy())
        filled = [blank if row is None else row for row in rows]
    if chain.fixed_size is not None or not filled:
        return ArrowTensorArray.from_numpy(np.stack(filled) if filled else blank[:0])
    return ArrowVariableShapedTensorArray.from_numpy(filled)


class ScoreActor:
    """Holds every scorer of the job; each call scores one batch of decoded rows with each.

    ``groups[i]`` is the pixel column of ``specs[i]`` (see :func:`decode_batch`).
    ``threads`` sets torch's CPU threads (Ray gives an actor as many as its ``num_cpus``).
    """

    def __init__(self, specs: Sequence[ModelSpec], groups: Sequence[int], preprocess: Sequence[Dict[str, Any]],
                 device: str, dtype: Optional[str], batch_size: int, threads: Optional[int] = None) -> None:
        import torch

        from ...config import PreprocessConfig

        if threads:
            torch.set_num_threads(threads)
        from ...allocator import keep_freed_memory

        keep_freed_memory()  # the actor's process is the job's own; set before the models load
        self.scorers = []
        for spec, group in zip(specs, groups):
            scorer = worker_spec(spec, device, dtype, batch_size).load()
            if scorer.preprocess.config != PreprocessConfig.from_dict(preprocess[group]):
                raise RuntimeError(f"{spec.name} preprocesses images differently from when the job "
                                   "was planned; were its weights replaced mid-job?")
            scorer.warm_up()  # while Ray Data starts its other stages, not in the first batch
            self.scorers.append((spec.name, scorer, pixels_column(group)))
        self.batch_size = batch_size

    def __call__(self, table: pa.Table) -> pa.Table:
        import torch

        from ...items import collate_pixels

        ok = pc.is_null(table.column(ERROR)).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(ok)
        prompts = table.column(PROMPT).take(pa.array(rows, pa.int64())).to_pylist()
        for column, scorer, source in self.scorers:
            pixels = table.column(source).combine_chunks().to_numpy()
            values: List[Optional[float]] = [None] * table.num_rows
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start:start + self.batch_size]
                batch = collate_pixels([torch.from_numpy(np.ascontiguousarray(pixels[i])) for i in chunk])
                scores = scorer.score_pixels(prompts[start:start + len(chunk)], batch)
                for index, score in zip(chunk, scores):
                    values[int(index)] = score
            table = table.append_column(column, pa.array(values, pa.float64()))
        return table.drop_columns([name for name in table.schema.names if name.startswith("_pixels_")])
