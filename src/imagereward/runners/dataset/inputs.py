"""Inputs of a data-set job: what the files are, how they split into fragments, how a fragment reads.

Three layouts are understood:

* ``manifest``: JSONL or CSV files with a prompt and an image path per row (paths
  relative to the manifest's folder, or absolute, or URIs such as ``s3://...``);
* ``parquet``: parquet files whose image column holds encoded bytes, a struct with a
  ``bytes`` field (Hugging Face ``datasets`` images, e.g. ImageRewardDB) or paths;
* ``webdataset``: tar shards of ``KEY.jpg|jpeg|png|webp`` with ``KEY.txt`` (the prompt)
  or ``KEY.json`` (an object holding the prompt).

Planning reads only what it must (manifests themselves, parquet footers, the first
header of each tar shard) and checks every file and column before any work starts.
Each fragment (a row range of a manifest, a run of row groups of a parquet file, a
tar shard) reads into one Arrow table of the standard columns below, with every row
of the fragment in it, numbered from 0.
"""

from __future__ import annotations

import hashlib
import logging
import json
import os
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pyarrow as pa

from ...errors import ImageRewardError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MANIFEST_SUFFIXES = (".jsonl", ".csv")

# Columns every fragment table carries; those starting with "_" never reach the output.
FRAGMENT = "_fragment"  # the fragment's key
ROW = "_row"  # position of the row in its fragment, 0..rows-1
FRAGMENT_ROWS = "_fragment_rows"  # how many rows the fragment has
IMAGE_BYTES = "_image_bytes"  # encoded image, when the input holds the bytes
IMAGE_PATH = "_image_path"  # where to read the image from, when it holds a path
INPUT_ERROR = "_input_error"  # what is wrong with the row itself (no prompt, no image)
ID, PROMPT, ERROR = "id", "prompt", "error"


class DatasetInputError(ImageRewardError, ValueError):
    """An input file or folder cannot be used (missing, unreadable, lacking a column); names it."""


@dataclass(frozen=True)
class Columns:
    """Where the fields are in the input.

    ``id=None`` takes a column named ``id`` when there is one, otherwise the image
    path (manifests, parquet structs holding a path), the tar key (webdataset) or
    ``FILE:ROW``. ``keep`` lists further input columns copied to the output as they
    are (e.g. ImageRewardDB's ``prompt_id``, Pick-a-Pic's ``ranking_id``).
    """

    id: Optional[str] = None
    prompt: str = "prompt"
    image: str = "image"
    keep: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Fragment:
    """A piece of the input whose output is written, and recorded as done, as one part file."""

    key: str  # stable name: input file relative to the input root, plus the row range
    layout: str
    path: str  # the file to read
    start: int = 0  # manifest: first row; parquet: first row group
    stop: int = 0  # one past the last
    rows: Optional[int] = None  # known when planning (manifests, parquet)

    @property
    def part_name(self) -> str:
        return f"part-{hashlib.sha1(self.key.encode('utf-8')).hexdigest()[:20]}.parquet"


@dataclass
class InputPlan:
    """The fragments of an input, and the types of the kept columns."""

    root: str
    layout: str
    columns: Columns
    fragments: List[Fragment]
    keep_types: Dict[str, pa.DataType] = field(default_factory=dict)
    manifests: Dict[str, pa.Table] = field(default_factory=dict)  # manifest path -> its rows

    def signature(self) -> Dict[str, Any]:
        """What makes two runs the same job: the layout, the columns, every fragment."""
        return {
            "layout": self.layout,
            "columns": {"id": self.columns.id, "prompt": self.columns.prompt,
                        "image": self.columns.image, "keep": list(self.columns.keep)},
            "fragments": [[f.key, f.part_name] for f in self.fragments],
        }


# -- planning ---------------------------------------------------------------------------------


def plan_input(source: str, columns: Columns = Columns(), fragment_rows: int = 10_000,
               exclude: Optional[str] = None) -> InputPlan:
    """Find the input files, check them and their columns, and split them into fragments.

    ``exclude`` is a folder inside the input that is not input (the job's output).
    """
    if fragment_rows < 1:
        raise ValueError(f"fragment_rows must be positive, got {fragment_rows}")
    path = os.path.abspath(os.path.expanduser(source))
    if os.path.isdir(path):
        files, root = _files_under(path), path
        if exclude is not None:
            skip = os.path.abspath(os.path.expanduser(exclude)) + os.sep
            files = [f for f in files if not f.startswith(skip)]
    elif os.path.isfile(path):
        files, root = [path], os.path.dirname(path)
    else:
        raise DatasetInputError(f"input not found: {source}")
    layouts = {_layout_of(f) for f in files} - {None}
    if not layouts:
        raise DatasetInputError(
            f"no input files in {source}: expected .jsonl or .csv manifests, .parquet files "
            "or .tar webdataset shards"
        )
    if len(layouts) > 1:
        raise DatasetInputError(f"{source} mixes input layouts ({', '.join(sorted(layouts))}); "
                                "give one kind of file")
    layout = layouts.pop()
    files = [f for f in files if _layout_of(f) == layout]
    plan = InputPlan(root=root, layout=layout, columns=columns, fragments=[])
    ids: List[Any] = []
    for file in files:
        name = os.path.relpath(file, root)
        if layout == "manifest":
            table = _read_manifest(file, columns)
            plan.manifests[file] = table
            _keep_types(plan, table.schema, file)
            ids.extend(_manifest_ids(table, columns))
            for start in range(0, table.num_rows, fragment_rows):
                stop = min(table.num_rows, start + fragment_rows)
                plan.fragments.append(
                    Fragment(f"{name}@{start}:{stop}", layout, file, start, stop, stop - start))
        elif layout == "parquet":
            plan.fragments.extend(_parquet_fragments(plan, file, name, fragment_rows))
        else:
            _check_tar(file)
            plan.keep_types.update({name: pa.string() for name in columns.keep})  # from KEY.json
            plan.fragments.append(Fragment(name, layout, file))
    repeated = len(ids) - len(set(ids))
    if repeated:
        logger.warning("%d manifest rows repeat the id of an earlier row: the output's ids are not "
                       "unique (give --id-column a column of unique ids)", repeated)
    return plan


def _manifest_ids(table: pa.Table, columns: Columns) -> List[Any]:
    """The ids a manifest's rows get: the id column, else ``id`` when there is one, else the image path."""
    name = columns.id or ("id" if "id" in table.schema.names else columns.image)
    return table.column(name).to_pylist()


def _files_under(folder: str) -> List[str]:
    found = []
    for directory, subdirs, names in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith((".", "_")))
        found.extend(os.path.join(directory, n) for n in sorted(names) if not n.startswith((".", "_")))
    return found


def _layout_of(path: str) -> Optional[str]:
    lower = path.lower()
    if lower.endswith(MANIFEST_SUFFIXES):
        return "manifest"
    if lower.endswith(".parquet"):
        return "parquet"
    if lower.endswith(".tar"):
        return "webdataset"
    return None


def _require(schema: pa.Schema, names: Sequence[str], path: str, hint: str = "") -> None:
    missing = [n for n in names if n not in schema.names]
    if missing:
        raise DatasetInputError(
            f"{path}: no column {', '.join(repr(m) for m in missing)} "
            f"(columns: {', '.join(schema.names)}){hint}"
        )


def _keep_types(plan: InputPlan, schema: pa.Schema, path: str) -> None:
    _require(schema, plan.columns.keep, path, "; check --keep-columns")
    for name in plan.columns.keep:
        if name in (ID, PROMPT, ERROR) or name.startswith("_"):
            raise DatasetInputError(f"--keep-columns: {name!r} is an output column of its own")
        plan.keep_types.setdefault(name, schema.field(name).type)


def _check_text(schema: pa.Schema, name: str, path: str) -> None:
    kind = schema.field(name).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
        raise DatasetInputError(f"{path}: column {name!r} holds {kind}, expected text")


def _read_manifest(path: str, columns: Columns) -> pa.Table:
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson

    try:
        if path.lower().endswith(".csv"):
            # Everything as text: ids such as 007 keep their zeros, prompts such as 42 stay text.
            table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
                strings_can_be_null=True, column_types=_all_text(path)))
        else:
            table = pjson.read_json(path)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as error:
        raise DatasetInputError(f"cannot read manifest {path}: {error}") from None
    id_columns = [columns.id] if columns.id else []
    _require(table.schema, [columns.prompt, columns.image, *id_columns], path,
             "; check --prompt-column, --image-column and --id-column")
    _check_text(table.schema, columns.prompt, path)
    _check_text(table.schema, columns.image, path)
    return table


def _all_text(path: str) -> Dict[str, pa.DataType]:
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    return {name: pa.string() for name in header}


def _image_kind(kind: pa.DataType, path: str, name: str) -> str:
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return "bytes"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "path"
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        return "struct"
    raise DatasetInputError(
        f"{path}: column {name!r} holds {kind}; expected image bytes, a struct with a "
        "'bytes' field, or image paths"
    )


def _parquet_fragments(plan: InputPlan, path: str, name: str, fragment_rows: int) -> List[Fragment]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
        schema = meta.schema.to_arrow_schema()
    except (pa.ArrowInvalid, OSError) as error:
        raise DatasetInputError(f"cannot read parquet file {path}: {error}") from None
    columns = plan.columns
    id_columns = [columns.id] if columns.id else []
    _require(schema, [columns.prompt, columns.image, *id_columns], path,
             "; check --prompt-column, --image-column and --id-column")
    _check_text(schema, columns.prompt, path)
    _image_kind(schema.field(columns.image).type, path, columns.image)
    _keep_types(plan, schema, path)
    fragments: List[Fragment] = []
    start, rows = 0, 0
    for group in range(meta.num_row_groups):
        rows += meta.row_group(group).num_rows
        if rows >= fragment_rows or group == meta.num_row_groups - 1:
            fragments.append(Fragment(f"{name}@{start}:{group + 1}", "parquet", path, start, group + 1, rows))
            start, rows = group + 1, 0
    if not fragments:  # a file with no row groups still counts as done once written
        fragments.append(Fragment(f"{name}@0:0", "parquet", path, 0, 0, 0))
    return fragments


def _check_tar(path: str) -> None:
    try:
        with tarfile.open(path, "r:") as archive:
            archive.next()
    except (tarfile.TarError, OSError) as error:
        raise DatasetInputError(f"cannot read tar shard {path}: {error}") from None


# -- reading a fragment -------------------------------------------------------------------------


def read_fragment(fragment: Fragment, columns: Columns, keep_types: Dict[str, pa.DataType],
                  manifest: Optional[pa.Table] = None) -> pa.Table:
    """All rows of ``fragment`` as one table of the standard columns (see the module docstring)."""
    if fragment.layout == "manifest":
        assert manifest is not None
        rows = manifest.slice(fragment.start, fragment.stop - fragment.start)
        table = _from_columns(rows, columns, fragment, os.path.dirname(fragment.path), "path")
    elif fragment.layout == "parquet":
        table = _read_parquet(fragment, columns)
    else:
        table = _read_tar(fragment, columns)
    for name in columns.keep:  # one type per kept column across files and layouts
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, table.column(name).cast(keep_types[name]))
    return table


def _read_parquet(fragment: Fragment, columns: Columns) -> pa.Table:
    import pyarrow.parquet as pq

    wanted = list(dict.fromkeys([c for c in (columns.id, columns.prompt, columns.image) if c]
                                + list(columns.keep)))
    handle = pq.ParquetFile(fragment.path)
    if "id" in handle.schema_arrow.names and "id" not in wanted and columns.id is None:
        wanted.append("id")
    rows = handle.read_row_groups(list(range(fragment.start, fragment.stop)), columns=wanted)
    kind = _image_kind(rows.schema.field(columns.image).type, fragment.path, columns.image)
    return _from_columns(rows, columns, fragment, os.path.dirname(fragment.path), kind)


def _from_columns(rows: pa.Table, columns: Columns, fragment: Fragment, base: str, kind: str) -> pa.Table:
    count = rows.num_rows
    image = rows.column(columns.image).combine_chunks() if count else pa.array([], pa.string())
    paths: List[Optional[str]] = [None] * count
    data: List[Optional[bytes]] = [None] * count
    fallback_ids: List[Optional[str]] = [None] * count
    if kind == "path":
        for i, value in enumerate(image.to_pylist()):
            if value:
                paths[i] = _resolve(base, value)
                fallback_ids[i] = value
    elif kind == "bytes":
        data = image.to_pylist()
    else:
        data = image.field("bytes").to_pylist()
        if image.type.get_field_index("path") >= 0:
            fallback_ids = image.field("path").to_pylist()
            for i, (payload, value) in enumerate(zip(data, fallback_ids)):
                if payload is None and value:
                    paths[i] = _resolve(base, value)
    id_name = columns.id or ("id" if "id" in rows.schema.names else None)
    if id_name is not None:
        ids = [None if v is None else str(v) for v in rows.column(id_name).to_pylist()]
    else:
        ids = fallback_ids
    name = os.path.basename(fragment.path)
    ids = [v if v is not None else f"{name}:{fragment_first_row(fragment) + i}" for i, v in enumerate(ids)]
    prompts = rows.column(columns.prompt).to_pylist()
    errors = [_row_error(p, d, q) for p, d, q in zip(prompts, data, paths)]
    table = _standard(fragment, ids, prompts, data, paths, errors)
    for keep in columns.keep:
        table = table.append_column(keep, rows.column(keep))
    return table


def fragment_first_row(fragment: Fragment) -> int:
    return fragment.start if fragment.layout == "manifest" else 0


def _resolve(base: str, value: str) -> str:
    if "://" in value or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def _row_error(prompt: Any, data: Optional[bytes], path: Optional[str]) -> Optional[str]:
    if not isinstance(prompt, str):
        return "no prompt"
    if data is None and path is None:
        return "no image"
    return None


def _standard(fragment: Fragment, ids: List[str], prompts: List[Any], data: List[Optional[bytes]],
              paths: List[Optional[str]], errors: List[Optional[str]]) -> pa.Table:
    count = len(ids)
    return pa.table({
        FRAGMENT: pa.array([fragment.key] * count, pa.string()),
        ROW: pa.array(range(count), pa.int64()),
        FRAGMENT_ROWS: pa.array([count] * count, pa.int64()),
        ID: pa.array(ids, pa.string()),
        PROMPT: pa.array([p if isinstance(p, str) else None for p in prompts], pa.string()),
        IMAGE_BYTES: pa.array(data, pa.binary()),
        IMAGE_PATH: pa.array(paths, pa.string()),
        INPUT_ERROR: pa.array(errors, pa.string()),
    })


def _read_tar(fragment: Fragment, columns: Columns) -> pa.Table:
    """Samples of a webdataset shard in order of first appearance of their keys."""
    samples: Dict[str, Dict[str, Any]] = {}
    with tarfile.open(fragment.path, "r:") as archive:
        for member in archive:
            if not member.isfile():
                continue
            stem, _, suffix = posixpath.basename(member.name).partition(".")
            key = posixpath.join(posixpath.dirname(member.name), stem)
            suffix = "." + suffix.lower()
            if suffix not in IMAGE_SUFFIXES + (".txt", ".json"):
                continue
            handle = archive.extractfile(member)
            payload = handle.read() if handle is not None else b""
            sample = samples.setdefault(key, {})
            if suffix in IMAGE_SUFFIXES:
                sample["image"] = payload
            else:
                sample[suffix] = payload
    ids, prompts, data, errors = [], [], [], []
    keep: Dict[str, List[Any]] = {name: [] for name in columns.keep}
    for key, sample in samples.items():
        prompt, fields, problem = _tar_prompt(sample, columns)
        ids.append(str(fields.get(columns.id, key)) if columns.id else key)
        prompts.append(prompt)
        data.append(sample.get("image"))
        errors.append(problem or _row_error(prompt, sample.get("image"), None))
        for name in columns.keep:
            value = fields.get(name)
            keep[name].append(None if value is None else str(value))
    table = _standard(fragment, ids, prompts, data, [None] * len(ids), errors)
    for name in columns.keep:
        table = table.append_column(name, pa.array(keep[name], pa.string()))
    return table


def _tar_prompt(sample: Dict[str, Any], columns: Columns) -> Tuple[Optional[str], Dict[str, Any], Optional[str]]:
    fields: Dict[str, Any] = {}
    if ".json" in sample:
        try:
            fields = json.loads(sample[".json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return None, {}, f"unreadable json: {error}"
        if not isinstance(fields, dict):
            return None, {}, "json is not an object"
    if ".txt" in sample:
        try:
            return sample[".txt"].decode("utf-8").strip(), fields, None
        except UnicodeDecodeError as error:
            return None, fields, f"unreadable txt: {error}"
    prompt = fields.get(columns.prompt)
    return (prompt if isinstance(prompt, str) else None), fields, None


def read_image_bytes(path: str) -> bytes:
    """The bytes of an image file: a local path, or any URI pyarrow has a filesystem for."""
    from ...errors import ImageNotFoundError

    if "://" not in path:
        if not os.path.isfile(path):
            raise ImageNotFoundError(path, "Image path is a folder, not a file"
                                     if os.path.isdir(path) else "Image file not found")
        with open(path, "rb") as handle:
            return handle.read()
    from pyarrow import fs

    try:
        filesystem, inner = fs.FileSystem.from_uri(path)
        with filesystem.open_input_stream(inner) as handle:
            return handle.read()
    except FileNotFoundError:
        raise ImageNotFoundError(path) from None
    except (OSError, pa.ArrowException) as error:
        raise ImageNotFoundError(path, f"Image file unreadable ({error})") from None


__all__ = ["Columns", "DatasetInputError", "Fragment", "InputPlan", "plan_input", "read_fragment",
           "read_image_bytes"]
