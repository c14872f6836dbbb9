"""The Ray Data datasource of a job: one read task per pending fragment, which hands on
its rows in blocks.

Ray's own file readers split work by file and do not say where in its file a row
was; the restart ledger needs both the fragment and the row's position in it, and
large manifests split into row ranges, so fragments are read by this datasource.

A fragment (10,000 rows by default) is the unit of restart, not of work: Ray Data runs
one decoding task per block, so a fragment read as one block is decoded on one CPU.
The job chooses the block size (:meth:`~.job.DatasetJob.read_block_rows`) so that
decoding fills the CPUs its scoring actors leave free.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Iterator, List, Optional

import pyarrow as pa
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from .inputs import Columns, Fragment, read_fragment


class FragmentSource(Datasource):
    """Reads ``fragments`` in blocks of up to ``block_rows`` rows; manifest rows come from
    the object store (``manifests``: path -> ref)."""

    def __init__(self, fragments: List[Fragment], columns: Columns,
                 keep_types: Dict[str, pa.DataType], manifests: Dict[str, Any], block_rows: int) -> None:
        if block_rows < 1:
            raise ValueError(f"block_rows must be positive, got {block_rows}")
        self.fragments, self.columns = fragments, columns
        self.keep_types, self.manifests = keep_types, manifests
        self.block_rows = block_rows

    def get_name(self) -> str:
        return "ImageRewardInput"

    def estimate_inmemory_data_size(self) -> Optional[int]:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None,
                       data_context: Any = None) -> List[ReadTask]:
        tasks = []
        for fragment in self.fragments:
            meta = _metadata(fragment)
            read = _reader(fragment, self.columns, self.keep_types, self.manifests.get(fragment.path),
                           self.block_rows)
            tasks.append(ReadTask(read, meta))
        return tasks


def _reader(fragment: Fragment, columns: Columns, keep_types: Dict[str, pa.DataType],
            manifest: Any, block_rows: int) -> Callable[[], Iterator[pa.Table]]:
    def read() -> Iterator[pa.Table]:
        import ray

        rows = ray.get(manifest) if manifest is not None else None
        table = read_fragment(fragment, columns, keep_types, rows)
        for start in range(0, table.num_rows, block_rows):
            yield table.slice(start, block_rows)

    return read


def _metadata(fragment: Fragment) -> BlockMetadata:
    fields: Dict[str, Any] = dict(num_rows=fragment.rows, size_bytes=None, exec_stats=None,
                                  input_files=[fragment.path])
    if "schema" in inspect.signature(BlockMetadata).parameters:  # Ray before 2.47
        fields["schema"] = None
    return BlockMetadata(**fields)
