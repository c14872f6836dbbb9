"""The driver of a data-set job: plan, skip what is done, stream the rest through Ray Data.

Pending fragments are read by a Ray Data datasource (one read task per fragment),
decoded by CPU tasks and scored by an actor pool. The driver collects the scored rows
of each fragment; when it holds all of them it writes the fragment's part file
atomically. Rows arriving twice (a retried task) are taken once; a fragment whose
rows are not all there is never written. Killing the driver at any point therefore
loses only the fragments in flight, which the next run scores again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import pyarrow as pa
import pyarrow.compute as pc

from .inputs import (
    ERROR, FRAGMENT, FRAGMENT_ROWS, ID, PROMPT, ROW, Columns, DatasetInputError, Fragment, InputPlan,
    plan_input,
)
from .ledger import Ledger, Totals
from ...errors import ExtraMissingError
from ...spec import ModelSpec
from ...cpu_share import cpu_allocation, threads_for
from ..placement import default_gpus
from .models import preprocess_configs

logger = logging.getLogger("imagereward")


def require_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise ExtraMissingError(
            f"scoring data sets needs Ray Data ({error}); install it with: "
            "pip install 'imagereward[ray]'") from None
    return ray


@dataclass
class JobSummary:
    """What a run did (``rows_scored``, ``seconds``) and where the whole job stands."""

    output: str
    fragments: int  # in the job
    fragments_done: int
    rows_in: int  # rows of the finished fragments
    rows_out: int  # rows in their part files
    errors: int  # of them, rows with an error
    rows_scored: int = 0  # by this run
    fragments_scored: int = 0  # by this run
    fragments_retried: int = 0  # of them, fragments whose part files held errors (retry_errors)
    seconds: float = 0.0  # this run's Ray Data execution, actor start included

    @property
    def complete(self) -> bool:
        return self.fragments_done == self.fragments and self.rows_in == self.rows_out

    @property
    def images_per_second(self) -> float:
        return self.rows_scored / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> Dict[str, Any]:
        """The summary as plain data (what ``--json`` prints), with ``complete`` and the rate."""
        return {**dataclasses.asdict(self), "complete": self.complete,
                "images_per_second": round(self.images_per_second, 3)}

    def line(self) -> str:
        state = "complete" if self.complete else \
            f"INCOMPLETE ({self.fragments - self.fragments_done} fragments left: run again)"
        retried = f" ({self.fragments_retried} fragments with errors again)" if self.fragments_retried else ""
        return (f"{state}: {self.rows_in} rows in, {self.rows_out} rows out, {self.errors} errors, "
                f"{self.fragments_done}/{self.fragments} fragments; this run scored "
                f"{self.rows_scored} rows{retried} in {self.seconds:.1f} s ({self.images_per_second:.2f} images/s); "
                f"output: {self.output}")


@dataclass
class DatasetJob:
    """Score every row of ``input`` with ``models`` into parquet part files in ``output``.

    A private Ray is started on this machine unless this process is connected to one
    already, or ``address`` (``"auto"``, ``"ray://head:10001"``) or ``RAY_ADDRESS`` names a
    cluster; it is not started when nothing is left to do.
    ``actors`` scoring actors run at once, each with ``gpus_per_actor`` GPUs (0: on CPUs;
    default: 1 when the cluster has GPUs and no model runs in int8) and ``cpus_per_actor``
    logical CPUs; ``threads_per_actor`` sets torch's threads in
    each (default: see :meth:`actor_threads`). ``batch_size`` rows go through a
    model at once and through each stage per call. ``fragment_rows`` is the size of the
    restartable pieces of manifests and parquet files (tar shards are one piece each).
    ``on_fragment(key)`` is called after each part file is written. With
    ``retry_errors`` the finished fragments whose part files hold rows with an error
    are scored again, whole (the part file is the unit a job keeps or redoes).
    """

    input: str
    output: str
    models: Sequence[ModelSpec] = (ModelSpec("ImageReward-v1.0"),)
    columns: Columns = Columns()
    address: Optional[str] = None
    actors: int = 1
    gpus_per_actor: Optional[float] = None
    cpus_per_actor: float = 1.0
    threads_per_actor: Optional[int] = None
    decode_cpus: float = 1.0
    batch_size: int = 16
    dtype: Optional[str] = None
    fragment_rows: int = 10_000
    progress: bool = True
    retry_errors: bool = False
    on_fragment: Optional[Callable[[str], None]] = None
    _plan: Optional[InputPlan] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.models = list(self.models)
        if not self.models:
            raise ValueError("give at least one model")
        columns = [m.name for m in self.models]
        clash = {ID, PROMPT, ERROR, *self.columns.keep} & set(columns)
        if len(set(columns)) != len(columns) or clash:
            raise ValueError(f"model columns must be distinct and not input or output columns: {columns}")
        for name, value in (("actors", self.actors), ("batch_size", self.batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        for name, value in (("cpus_per_actor", self.cpus_per_actor), ("decode_cpus", self.decode_cpus)):
            if value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")
        int8 = [m.name for m in self.models if m.options.get("int8")]
        if int8 and self.gpus_per_actor:
            raise ValueError(f"{', '.join(int8)} run in int8 on CPUs: gpus_per_actor must be 0, "
                             f"got {self.gpus_per_actor}")

    # -- the parts a caller may want on their own ----------------------------------------------
    def plan(self) -> InputPlan:
        """Check the input and split it into fragments (no Ray needed)."""
        if self._plan is None:
            self._plan = plan_input(self.input, self.columns, self.fragment_rows, exclude=self.output)
        return self._plan

    def open_ledger(self) -> Ledger:
        ledger = Ledger(self.output)
        ledger.open({"plan": self.plan().signature(), "models": [m.to_dict() for m in self.models]})
        return ledger

    # -- running ----------------------------------------------------------------------------
    def run(self) -> JobSummary:
        plan = self.plan()
        ledger = self.open_ledger()
        summary = JobSummary(output=ledger.directory, fragments=len(plan.fragments), fragments_done=0,
                             rows_in=0, rows_out=0, errors=0)
        if self.retry_errors:
            ours = {f.part_name for f in plan.fragments}
            summary.fragments_retried = len(ledger.drop_failed(ours & ledger.done()))
            if summary.fragments_retried:
                logger.info("%d fragments with errors to score again", summary.fragments_retried)
        done = ledger.done()
        pending = [f for f in plan.fragments if f.part_name not in done]
        if pending:
            logger.info("%d of %d fragments to score", len(pending), len(plan.fragments))
            self._score(plan, ledger, pending, summary)
        else:
            logger.info("all %d fragments are done", len(plan.fragments))
        finished = [f.part_name for f in plan.fragments if f.part_name in ledger.done()]
        totals: Totals = ledger.totals(finished)
        summary.fragments_done = totals.fragments
        summary.rows_in, summary.rows_out, summary.errors = totals.rows_in, totals.rows_out, totals.errors
        return summary

    def _score(self, plan: InputPlan, ledger: Ledger, pending: List[Fragment], summary: JobSummary) -> None:
        ray, private = self._connect()
        threads = self.actor_threads(private)
        logger.info("scoring actors on CPUs run %d torch threads each", threads)
        # A private Ray's workers inherit this process's environment as it was a moment
        # ago; a runtime environment would only keep them from reusing started workers.
        env = {} if private else worker_env()
        dataset = self._dataset(ray, plan, pending, self._preprocessing(ray, ledger, env), threads, env)
        schema = output_schema(self.models, plan)
        collector = Collector({f.key: f for f in pending})
        start = time.perf_counter()
        # No prefetching: Ray Data's iterator would hold each scored block until the next
        # one arrives, so a finished fragment would wait a whole fragment to be written.
        for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
            for fragment, rows in collector.add(table):
                self._write(ledger, fragment, rows, schema)
                summary.rows_scored += rows.num_rows
                summary.fragments_scored += 1
        for fragment in collector.unseen():  # read tasks that produced no rows
            if fragment.rows is None or fragment.rows == 0:
                self._write(ledger, fragment, schema.empty_table(), schema)
                summary.fragments_scored += 1
        summary.seconds = time.perf_counter() - start
        if collector.partial():
            logger.warning("rows missing from fragments %s; run again to score them",
                           ", ".join(collector.partial()))

    def ray_address(self) -> str:
        """Where the job runs: ``address``, else ``RAY_ADDRESS``, else ``"local"``: a private
        Ray of its own on this machine, never a cluster that happens to run here."""
        return self.address or os.environ.get("RAY_ADDRESS") or "local"

    def describe_ray(self) -> str:
        address = self.ray_address()
        if address == "local":
            return "a private Ray on this machine, for this job only"
        return f"the Ray cluster at {address}"

    def _connect(self) -> Tuple[Any, bool]:
        """Ray, and whether this job started it (a private Ray on this machine)."""
        ray = require_ray()
        private = False
        if not ray.is_initialized():
            address = self.ray_address()
            level = logging.INFO if logger.isEnabledFor(logging.INFO) else logging.WARNING
            if address == "local":
                from .. import private_ray

                private_ray.start(logger.isEnabledFor(logging.INFO), logging_level=level)
                private = True
            else:
                ray.init(address=address, logging_level=level)
        ray.data.DataContext.get_current().enable_progress_bars = self.progress
        if not logger.isEnabledFor(logging.INFO):  # Ray Data's notices (progress bars off, done)
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        return ray, private

    def _preprocessing(self, ray: Any, ledger: Ledger, env: Dict[str, Any]) -> List[Dict[str, Any]]:
        """Each model's ``PreprocessConfig`` fields, read from the loaded scorers once per job."""
        preprocess = ledger.get("preprocess")
        if preprocess is None:
            probe = ray.remote(num_cpus=0)(preprocess_configs).options(runtime_env=env)
            try:
                preprocess = ray.get(probe.remote(self.models))
            except ray.exceptions.RayTaskError as error:  # the model cannot be loaded: say why
                raise error.cause if isinstance(error.cause, Exception) else error from None
            ledger.set("preprocess", preprocess)
        return preprocess

    def _dataset(self, ray: Any, plan: InputPlan, pending: List[Fragment],
                 preprocess: List[Dict[str, Any]], threads: int, env: Dict[str, Any]) -> Any:
        """Read the pending fragments, decode once per distinct preprocessing, score in actors."""
        from .source import FragmentSource
        from .stages import ScoreActor, decode_batch

        distinct: List[Dict[str, Any]] = []
        groups = []
        for config in preprocess:  # models that see images the same way share decoded pixels
            if config not in distinct:
                distinct.append(config)
            groups.append(distinct.index(config))
        resources = ray.cluster_resources()  # one question to the cluster for both
        gpus = self.gpus_per_actor
        if gpus is None:
            gpus = default_gpus(resources.get("GPU", 0.0), int8=any(m.options.get("int8") for m in self.models))
        manifests = {path: ray.put(table) for path, table in plan.manifests.items()
                     if any(f.path == path for f in pending)}
        block_rows = self.read_block_rows(pending, resources.get("CPU", 1.0))
        source = FragmentSource(pending, plan.columns, plan.keep_types, manifests, block_rows)
        dataset = ray.data.read_datasource(source, override_num_blocks=len(pending))
        dataset = dataset.map_batches(
            decode_batch, batch_format="pyarrow", batch_size=self.batch_size,
            fn_kwargs={"preprocess": distinct}, num_cpus=self.decode_cpus, zero_copy_batch=True,
        )
        return dataset.map_batches(
            ScoreActor, batch_format="pyarrow", batch_size=self.batch_size,
            fn_constructor_kwargs=dict(specs=self.models, groups=groups, preprocess=distinct,
                                       device="cuda" if gpus > 0 else "cpu", dtype=self.dtype,
                                       batch_size=self.batch_size, threads=threads),
            compute=ray.data.ActorPoolStrategy(size=self.actors),
            num_gpus=gpus or None, num_cpus=self.cpus_per_actor, runtime_env=env,
        )

    def read_block_rows(self, pending: Sequence[Fragment], cpus: float) -> int:
        """Rows per block the fragments are read in, so that decoding fills the CPUs the
        scoring actors leave free: Ray Data decodes each block in one task, and a fragment
        read whole (10,000 rows by default) is decoded on one CPU however many the node
        has. Never less than a batch; where one decoding task fits beside the actors (2
        CPUs and one actor), every fragment stays one block, since splitting it only
        made decoding compete with the model's threads (2-5% slower there)."""
        per_task = self.decode_cpus or 1.0  # zero-CPU tasks are not limited by Ray; CPUs still are
        slots = max(1, int((cpus - self.actors * self.cpus_per_actor) // per_task))
        # WebDataset shards are counted only when read: take each as a full fragment.
        rows = sum(self.fragment_rows if fragment.rows is None else fragment.rows for fragment in pending)
        return max(self.batch_size, -(-rows // slots))

    def actor_threads(self, private_ray: bool) -> int:
        """torch threads in each scoring actor on CPUs: ``threads_per_actor``; else, on a
        private Ray (this machine, this job only), an even share among the actors of the
        CPUs this process may use, as in-process scoring takes them (the decoding tasks
        are light beside the model: with ``cpus_per_actor`` threads, one of two cores
        sat idle); else, on a cluster whose nodes other work shares, the actor's CPU
        share, rounded, at least one, so that it does not oversubscribe its node."""
        if self.threads_per_actor:
            return self.threads_per_actor
        if private_ray:
            return threads_for(cpu_allocation() / self.actors)
        return threads_for(self.cpus_per_actor)

    def _write(self, ledger: Ledger, fragment: Fragment, rows: pa.Table, schema: pa.Schema) -> None:
        rows = rows.select(schema.names).cast(schema)
        errors = rows.num_rows - int(pc.sum(pc.is_null(rows.column(ERROR))).as_py() or 0)
        ledger.write_part(fragment.part_name, rows, fragment.key, errors)
        if self.on_fragment is not None:
            self.on_fragment(fragment.key)


def worker_env() -> Dict[str, Any]:
    """The driver's offline switches and local file settings, for the workers that load models."""
    names = ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE")
    env = {k: v for k, v in os.environ.items() if k.startswith("IMAGEREWARD_") or k in names}
    return {"env_vars": env} if env else {}


def output_schema(models: Sequence[ModelSpec], plan: InputPlan) -> pa.Schema:
    fields = [pa.field(ID, pa.string()), pa.field(PROMPT, pa.string())]
    fields += [pa.field(m.name, pa.float64()) for m in models]
    fields.append(pa.field(ERROR, pa.string()))
    fields += [pa.field(name, plan.keep_types[name]) for name in plan.columns.keep]
    return pa.schema(fields)


class Collector:
    """Scored rows per fragment until each fragment is whole; duplicates are dropped."""

    def __init__(self, fragments: Dict[str, Fragment]) -> None:
        self.fragments = fragments
        self.tables: Dict[str, List[pa.Table]] = {}
        self.rows: Dict[str, Set[int]] = {}
        self.finished: Set[str] = set()

    def add(self, table: pa.Table) -> List[Tuple[Fragment, pa.Table]]:
        """Take a batch of scored rows; return the fragments it completes, with all their rows."""
        complete = []
        keys = table.column(FRAGMENT)
        for key in pc.unique(keys).to_pylist():
            if key in self.finished:
                continue
            part = table.filter(pc.equal(keys, key))
            expected = part.column(FRAGMENT_ROWS)[0].as_py()
            seen = self.rows.setdefault(key, set())
            numbers = part.column(ROW).to_pylist()
            fresh = []
            for index, number in enumerate(numbers):
                if number not in seen:
                    seen.add(number)
                    fresh.append(index)
            if len(fresh) < len(numbers):
                part = part.take(pa.array(fresh, pa.int64()))
            self.tables.setdefault(key, []).append(part)
            if len(seen) == expected:
                rows = pa.concat_tables(self.tables.pop(key)).sort_by(ROW)
                self.finished.add(key)
                complete.append((self.fragments[key], rows))
        return complete

    def unseen(self) -> List[Fragment]:
        return [f for k, f in self.fragments.items() if k not in self.rows]

    def partial(self) -> List[str]:
        return [k for k in self.rows if k not in self.finished]


def score_dataset(input: str, output: str, models: Sequence[Any] = ("ImageReward-v1.0",),
                  **options: Any) -> JobSummary:
    """Score a data set with Ray Data; ``options`` are those of :class:`DatasetJob`.

    ``models`` are names or :class:`ModelSpec` s. Running it again with the same
    arguments continues an interrupted job.
    """
    specs = [m if isinstance(m, ModelSpec) else ModelSpec(m) for m in models]
    return DatasetJob(input=input, output=output, models=specs, **options).run()


__all__ = ["DatasetInputError", "DatasetJob", "JobSummary", "ExtraMissingError", "score_dataset"]
