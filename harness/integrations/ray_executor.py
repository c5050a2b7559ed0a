"""Ray as the executor of a sweep's cell batches and of a map's units (:class:`RayMapExecutor`).

Each worker is a Ray actor that loads the model once by name or path (:class:`ModelSpec`,
never weights through the object store), checks it has the driver's fingerprint, and
evaluates the batches the driver sends it with the same code as the local path
(``CellRunner._evaluate``). On a GPU an actor asks for ``gpus_per_worker`` (1 by default;
0.5 puts two actors on one card), on the CPU for ``threads_per_worker`` cores.

Fault tolerance comes from Ray and the cache together: an actor that dies with its process
is restarted (``max_restarts``) and its unfinished batches retried (``max_task_retries``);
a driver that dies is restarted by hand and reuses every batch already in the cache.

Cache modes: ``driver`` (default) — workers return payloads and the driver writes them, so
the run directory need not be visible to the workers; ``shared`` — workers write the cells
into the run's cache themselves (a path every node sees), the driver only reads.

A map's units (:mod:`harness.engine.map_units`) go to actors the same way: each loads the
model once, maps the units it is sent and returns them; the driver saves each unit as it
arrives, so a restarted driver maps only the units still missing.

Ray is imported only when a Ray executor is made: the package works without it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.engine.map_units import LocalMapExecutor, MapExecutor, MapJob, Unit, UnitResults
from harness.errors import PowersteerError
from harness.evaluation.cache import ResultCache, content_key, model_fingerprint, tensor_digest
from harness.evaluation.cell_runner import CellRunner
from harness.evaluation.executors import Batch, Executor, LocalExecutor, ModelSpec

if TYPE_CHECKING:
    from harness.engine.models import LanguageModel
    from harness.engine.sensitivity import SensitivityMap

CACHE_MODES = ("driver", "shared")
MAX_RESTARTS = 3  # per actor: a worker killed more often than this fails the run


def make_executor(
    spec: str = "local",
    *,
    model: ModelSpec | None = None,
    workers: int = 2,
    cache: str = "driver",
    gpus_per_worker: float | None = None,
    threads_per_worker: int = 1,
) -> Executor:
    """``local`` or ``ray[:ADDRESS]`` (``ray`` alone: the cluster in ``RAY_ADDRESS``, else a
    new local one; ``ray:auto``: the running cluster of this node; ``ray:HOST:PORT``)."""
    if spec == "local":
        return LocalExecutor()
    address, model = _ray_address(spec, model)
    return RayExecutor(
        model,
        address=address,
        workers=workers,
        cache=cache,
        gpus_per_worker=gpus_per_worker,
        threads_per_worker=threads_per_worker,
    )


def make_map_executor(
    spec: str = "local", *, model: ModelSpec | None = None, **settings: Any
) -> MapExecutor:
    """A map's units' executor: ``local`` or ``ray[:ADDRESS]``, as in :func:`make_executor`;
    ``settings`` are :class:`RayMapExecutor`'s (``workers``, ``threads_per_worker``, ...)."""
    if spec == "local":
        return LocalMapExecutor()
    address, model = _ray_address(spec, model)
    return RayMapExecutor(model, address=address, **settings)


def _ray_address(spec: str, model: ModelSpec | None) -> tuple[str | None, ModelSpec]:
    """The cluster address of a ``ray[:ADDRESS]`` spec (None: Ray's default) and the model."""
    kind, _, address = spec.partition(":")
    if kind != "ray":
        raise PowersteerError(
            f"--executor {spec!r}: unknown executor; use local, ray or ray:ADDRESS"
        )
    if model is None:
        raise PowersteerError("the ray executor needs the model's ModelSpec (name or path)")
    return address or None, model


class ModelWorker:
    """One Ray actor's model, loaded once and checked against the driver's fingerprint."""

    def __init__(self, model: ModelSpec, fingerprint: str, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.lm = model.load()
        loaded = model_fingerprint(self.lm)
        if loaded != fingerprint:
            raise PowersteerError(
                f"worker {os.getpid()}: {model.name_or_path!r} loaded here differs from the "
                "driver's model (fingerprint mismatch); give every node the same weights"
            )

    def pid(self) -> int:
        return os.getpid()


class RayActors:
    """``workers`` Ray actors of ``worker_class`` (a :class:`ModelWorker`): the connection,
    their start, the dispatch of work to them, and their end."""

    worker_class: type[ModelWorker]

    def __init__(
        self,
        model: ModelSpec,
        *,
        address: str | None = None,
        workers: int = 2,
        gpus_per_worker: float | None = None,
        threads_per_worker: int = 1,
    ) -> None:
        if workers < 1:
            raise PowersteerError(f"--workers {workers}: give at least 1")
        self.model, self.address, self.workers = model, address, workers
        on_gpu = model.device.startswith("cuda")
        default_gpus = 1.0 if on_gpu else 0.0
        self.gpus_per_worker = default_gpus if gpus_per_worker is None else gpus_per_worker
        self.threads_per_worker = threads_per_worker
        self._actors: list[Any] = []
        self._fingerprint: str | None = None
        self._connect()  # now, so a bad address fails before minutes of vectors

    def _connect(self) -> None:
        ray = _ray()
        if not ray.is_initialized():
            try:
                _probe(self.address)
                ray.init(address=self.address, log_to_driver=False, include_dashboard=False)
            except (OSError, RuntimeError, ValueError) as error:
                where = self.address or os.environ.get("RAY_ADDRESS") or "a new local cluster"
                reason = (str(error).splitlines() or [""])[0]
                raise PowersteerError(
                    f"--executor ray: cannot reach the Ray cluster at {where} "
                    f"({type(error).__name__}: {reason}); "
                    "start it with `ray start --head` and pass its address as ray:HOST:PORT, "
                    "or use --executor local"
                ) from error

    def worker_pids(self) -> list[int]:
        """The process ids of the live actors (empty before the first batch or unit)."""
        ray = _ray()
        return ray.get([actor.pid.remote() for actor in self._actors])

    def _as_finished(
        self, count: int, submit: Callable[[Any, int], Any], queued_per_actor: int
    ) -> Iterator[tuple[int, Any]]:
        """Items ``0..count-1`` sent to the actors (``submit(actor, index)`` returns the
        result's ref), at most ``queued_per_actor`` each at a time; yields ``(index,
        result)`` as they finish, and sends a finished actor the next item."""
        ray = _ray()
        pending = list(range(count))[::-1]
        in_flight: dict[Any, tuple[int, Any]] = {}  # result ref -> (item index, actor)

        def send(actor: Any) -> None:
            index = pending.pop()
            in_flight[submit(actor, index)] = (index, actor)

        for _ in range(queued_per_actor):
            for actor in self._actors:
                if pending:
                    send(actor)
        while in_flight:
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            index, actor = in_flight.pop(ref)
            result = ray.get(ref)
            if pending:
                send(actor)
            yield index, result

    def _start(self, fingerprint: str) -> None:
        if self._actors:
            if fingerprint != self._fingerprint:
                raise PowersteerError(
                    "one Ray executor serves one model; make a new executor for another model"
                )
            return
        ray = _ray()
        worker = ray.remote(
            num_cpus=self.threads_per_worker,
            num_gpus=self.gpus_per_worker,
            max_restarts=MAX_RESTARTS,
            max_task_retries=MAX_RESTARTS,
        )(self.worker_class)
        self._actors = [
            worker.remote(self.model, fingerprint, self.threads_per_worker)
            for _ in range(self.workers)
        ]
        self._fingerprint = fingerprint

    def shutdown(self) -> None:
        """End the actors (the cluster stays up)."""
        if self._actors:
            ray = _ray()
            for actor in self._actors:
                ray.kill(actor, no_restart=True)
            self._actors = []


class CellWorker(ModelWorker):
    """One Ray actor's state: the loaded model and a cell runner per behavior."""

    def __init__(self, model: ModelSpec, fingerprint: str, threads: int) -> None:
        super().__init__(model, fingerprint, threads)
        self.runners: dict[str, CellRunner] = {}

    def evaluate(
        self, job: tuple, split: str, batch: Batch, shared_root: str | None
    ) -> list[dict[str, Any]]:
        runner = self._runner(*job)
        payloads = list(runner._evaluate(batch, split))
        if shared_root is not None:
            cache = ResultCache(shared_root)
            for (_, key), payload in zip(batch, payloads, strict=True):
                cache.put_cell(key, payload)
        return payloads

    def _runner(
        self, behavior: Any, vectors: dict, scale_unit: float, batch_rows: int, fingerprint: str
    ) -> CellRunner:
        from harness.evaluation.preparation import prepare_behavior

        key = content_key(
            behavior=behavior.model_dump(mode="json"),
            vectors={m: tensor_digest(v.vectors) for m, v in sorted(vectors.items())},
            scale_unit=scale_unit,
        )
        if key not in self.runners:
            prepared = prepare_behavior(self.lm, behavior)
            runner = CellRunner(
                self.lm,
                prepared,
                behavior.make_scorer(),
                ResultCache(os.devnull),  # unused: the worker never reads the cache
                fingerprint,
                vectors,
                scale_unit,
                batch_rows,
            )
            runner.extras = behavior.make_extra_scorers()  # logits extras are scored here
            self.runners[key] = runner
        return self.runners[key]


class RayExecutor(RayActors):
    """Evaluates batches on ``workers`` Ray actors; see the module docstring."""

    worker_class = CellWorker

    def __init__(self, model: ModelSpec, *, cache: str = "driver", **settings: Any) -> None:
        """``settings`` are :class:`RayActors`' (``address``, ``workers``, ...)."""
        if cache not in CACHE_MODES:
            raise PowersteerError(f"--cache {cache!r}: use one of {', '.join(CACHE_MODES)}")
        self.cache_mode = cache
        self.writes_cache = cache == "shared"
        super().__init__(model, **settings)

    def evaluate(
        self, runner: CellRunner, split: str, batches: Sequence[Batch]
    ) -> Iterator[tuple[Batch, list[dict[str, Any]]]]:
        if not batches:
            return
        ray = _ray()
        self._start(runner.fingerprint)
        shared_root = str(Path(runner.cache.root).resolve()) if self.writes_cache else None
        job = (
            runner.prepared.behavior,
            runner.vectors,
            runner.scale_unit,
            runner.batch_rows,
            runner.fingerprint,
        )
        job_ref = ray.put(job)  # vectors are small; the model never travels

        def submit(actor: Any, index: int) -> Any:
            return actor.evaluate.remote(job_ref, split, batches[index], shared_root)

        # Two batches queued per actor keep it busy while the driver handles a result.
        for index, payloads in self._as_finished(len(batches), submit, queued_per_actor=2):
            yield batches[index], payloads


class MapWorker(ModelWorker):
    """One Ray actor that maps units (:func:`~harness.engine.sensitivity.sensitivity_map`)."""

    def map_unit(self, job: MapJob, unit: Unit) -> SensitivityMap:
        return job.map(self.lm, unit)


class RayMapExecutor(RayActors):
    """Maps units on ``workers`` Ray actors (:class:`~harness.engine.map_units.MapExecutor`)."""

    worker_class = MapWorker

    def map_units(self, lm: LanguageModel, job: MapJob, units: Sequence[Unit]) -> UnitResults:
        if not units:
            return
        ray = _ray()
        self._start(model_fingerprint(lm))
        job_ref = ray.put(job)  # prompts and options; never the model

        def submit(actor: Any, index: int) -> Any:
            return actor.map_unit.remote(job_ref, units[index])

        # One unit at a time per actor: units are long, and one queued behind a busy actor
        # could wait there while another actor sits idle.
        yield from self._as_finished(len(units), submit, queued_per_actor=1)


def _probe(address: str | None, timeout_s: float = 5.0) -> None:
    """Raise OSError when ``HOST:PORT`` accepts no connection: ray.init would retry it for
    a minute before failing."""
    if address is None or address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{address!r} is not HOST:PORT")
    socket.create_connection((host, int(port)), timeout=timeout_s).close()


def _ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise PowersteerError(
            "--executor ray needs Ray: pip install 'powersteer[ray]' (or use --executor local)"
        ) from error
    return ray
