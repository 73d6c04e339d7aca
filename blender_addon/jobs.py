"""The job queue: sd_core runs on one worker thread so Blender's UI never waits for diffusion.

The main thread ``submit``s requests and ``poll``s for events (progress, finished, failed); it is
the only thread that touches bpy. The worker owns the ``Engine`` and keeps its models loaded between
jobs. Cancel is an event the engine checks every step. This module imports no bpy, so tests drive it
directly; in Blender a timer calls ``poll`` (see ``operators.py``).
"""

from __future__ import annotations

import functools
import itertools
import queue
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from sd_core.errors import CancelledError, SDCoreError
from sd_core.request import EngineSettings, GenerationRequest, Progress, Result

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
EngineFactory = Callable[[EngineSettings], Any]
Task = Callable[[Any, "Job"], Any]
"""Work beyond one request (multi-view texturing): called on the worker with the engine and its job."""


@dataclass
class Job:
    """One request (or task) and what became of it. ``context`` carries the caller's write-back instructions."""

    id: int
    request: GenerationRequest | None = None
    task: Task | None = None
    context: dict[str, Any] = field(default_factory=dict)
    # Work on the request's result that needs no Blender data, done on the worker so the UI never waits on it
    # (writing the PNGs, projecting the image into textures); what it returns is ``worker_output``.
    finish_on_worker: Callable[[Result], Any] | None = None
    worker_output: Any = None
    state: JobState = "queued"
    progress: Progress | None = None
    result: Result | Any = None
    error: str | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def is_active(self) -> bool:
        return self.state in ("queued", "running")

    def fraction(self) -> float:
        if self.state == "done":
            return 1.0
        if self.progress is None or self.progress.total == 0:
            return 0.0
        images = self.request.batch_size if self.request is not None else 1
        return (self.progress.image_index + self.progress.step / self.progress.total) / images

    def should_cancel(self) -> bool:
        return self.cancel_requested.is_set()


@dataclass(frozen=True)
class JobEvent:
    """``started`` when the worker takes the job (models may load, the GPU fast path may prepare before step 1)."""

    kind: Literal["started", "progress", "finished"]
    job: Job


def _default_engine(settings: EngineSettings) -> Any:
    from sd_core.engine import Engine

    return Engine(settings)


class JobRunner:
    """A FIFO of jobs served by one daemon worker thread."""

    def __init__(self, settings: EngineSettings, engine_factory: EngineFactory = _default_engine) -> None:
        self._settings = settings
        self._engine_factory = engine_factory
        self._engine: Any = None
        self._pending: queue.Queue[Job | threading.Event] = queue.Queue()
        self._events: queue.Queue[JobEvent] = queue.Queue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._jobs: list[Job] = []
        self._worker = threading.Thread(target=self._work, name="sd_core-worker", daemon=True)
        self._worker.start()

    # --- main thread -------------------------------------------------------------------------
    def configure(self, settings: EngineSettings) -> None:
        """New device/precision/low-VRAM settings take effect from the next job (models reload then)."""
        with self._lock:
            self._settings = settings

    def submit(
        self,
        request: GenerationRequest,
        context: dict[str, Any] | None = None,
        finish_on_worker: Callable[[Result], Any] | None = None,
    ) -> Job:
        job = Job(id=next(self._ids), request=request, context=context or {}, finish_on_worker=finish_on_worker)
        return self._enqueue(job)

    def submit_task(self, task: Task, context: dict[str, Any] | None = None) -> Job:
        """Queue ``task(engine, job)``: it reports via ``runner.report(job, ...)`` and checks ``job.should_cancel``."""
        return self._enqueue(Job(id=next(self._ids), task=task, context=context or {}))

    def _enqueue(self, job: Job) -> Job:
        with self._lock:
            self._jobs.append(job)
        self._pending.put(job)
        return job

    def cancel(self, job: Job | None = None) -> None:
        """Cancel one job, or every queued and running job."""
        with self._lock:
            targets = [job] if job is not None else [j for j in self._jobs if j.is_active]
        for target in targets:
            target.cancel_requested.set()

    def active_jobs(self) -> list[Job]:
        with self._lock:
            return [job for job in self._jobs if job.is_active]

    def poll(self) -> list[JobEvent]:
        """Events since the last poll, oldest first. Only the newest progress event per job is kept."""
        events: list[JobEvent] = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        newest_progress = {id(e.job): e for e in events if e.kind == "progress"}
        return [e for e in events if e.kind != "progress" or newest_progress[id(e.job)] is e]

    def wait(self, job: Job, timeout: float | None = None) -> Job:
        """Block until the job ends (headless use); the UI never calls this."""
        job.finished.wait(timeout)
        return job

    def unload(self) -> None:
        """Free the models; the next job loads them again."""
        done = threading.Event()
        self._pending.put(done)  # served in order, so it never interrupts a running job
        done.wait(timeout=60)

    # --- worker thread -----------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._pending.get()
            if isinstance(item, Job):
                self._run(item)
            else:
                self._unload_engine()
                item.set()

    def _unload_engine(self) -> None:
        if self._engine is not None:
            self._engine.unload()
            self._engine = None

    def _engine_for_current_settings(self) -> Any:
        with self._lock:
            settings = self._settings
        if self._engine is not None and self._engine.settings != settings:
            self._unload_engine()
        if self._engine is None:
            self._engine = self._engine_factory(settings)
        return self._engine

    def _run(self, job: Job) -> None:
        if job.cancel_requested.is_set():
            self._finish(job, "cancelled", error="Generation cancelled.")
            return
        job.state = "running"
        self._events.put(JobEvent("started", job))
        try:
            engine = self._engine_for_current_settings()
            if job.task is not None:
                job.result = job.task(engine, job)
            else:
                report = functools.partial(self.report, job)
                job.result = engine.generate(job.request, on_progress=report, should_cancel=job.should_cancel)
                if job.finish_on_worker is not None:
                    job.worker_output = job.finish_on_worker(job.result)
        except CancelledError as error:
            self._finish(job, "cancelled", error=str(error))
        except SDCoreError as error:
            self._finish(job, "failed", error=str(error))
        except Exception as error:  # a bug, not an artist error: keep the details for the console
            traceback.print_exc()
            self._finish(job, "failed", error=f"Unexpected error ({type(error).__name__}: {error}); see the console.")
        else:
            self._finish(job, "done")

    def report(self, job: Job, progress: Progress) -> None:
        """Record progress (any thread); the main thread sees it at its next ``poll``."""
        job.progress = progress
        self._events.put(JobEvent("progress", job))

    def _finish(self, job: Job, state: JobState, error: str | None = None) -> None:
        job.state = state
        job.error = error
        self._events.put(JobEvent("finished", job))
        job.finished.set()
