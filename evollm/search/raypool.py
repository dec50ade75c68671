"""`RayPool`: a run's candidates scored by `search.workers` Ray actors (`pip install 'evollm[ray]'`).

Each actor opens the run's workbench once (its sources on its own GPU, or on the CPU with the run's
`search.threads`) and then takes one job at a time: a candidate's parameters, a reference model of the
report, the export of the best recipe. Jobs go to whichever worker is free, so no worker waits for a
static split; results are handed back in the jobs' order, so the driver logs exactly what a run without
Ray logs. A worker whose process dies (killed, out of host memory, its node lost) has its job run again on
another worker and is replaced; a job that kills `MAX_DEATHS` workers is a failed candidate. Paths (the
sources, the data, the run folder) must read the same on every node: hub ids, or shared storage.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from pathlib import Path
from types import SimpleNamespace

from .pool import LocalPool
from .runfolder import RunFailed

INSTALL = "pip install 'evollm[ray]'"
MAX_DEATHS = 3              # a job whose worker died this many times is given up (a candidate: failed)
_started = []               # the Ray instance this process started (shut down when its pool closes)


class PoolError(ValueError):
    """The pool cannot start as asked (Ray missing, too few cores or GPUs): an input error."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise PoolError(f"search.workers > 1 (or a Ray address) runs candidates on a Ray actor pool, and Ray "
                           f"is not installed: {INSTALL}") from None
    return ray


def connect(cfg):
    """Ray, connected: to `search.ray_address` (e.g. `auto`: the cluster `ray start` made on this node),
    or to a Ray instance started on this machine with its cores (and GPUs)."""
    ray = import_ray()
    if not ray.is_initialized():
        import logging
        address = cfg.search.ray_address
        kw = {} if address else {"num_cpus": os.cpu_count()}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                 configure_logging=False, **kw)
        _started.append(True)
    return ray


class Worker:
    """One actor's side of the pool: a LocalPool over the run's config."""

    def start(self, cfg_dict: dict) -> dict:
        import socket

        import torch

        from .config import RunConfig
        lines = []
        self.local = LocalPool.open(RunConfig.from_dict(cfg_dict), lines.append)
        return {"pid": os.getpid(), "host": socket.gethostname(), "threads": torch.get_num_threads(),
                "load_s": self.local.load_s, "log": lines}

    def describe(self):
        return self.local.space, self.local.task, list(self.local.models(None))

    def evaluate(self, params: dict, items) -> dict:
        return next(self.local.evaluate([(None, params, items)]))

    def export_best(self, best: dict, folder: str):
        self.local.export_best(best, Path(folder))

    def score(self, label: str, exported: str) -> dict:
        return self.local.score_one(label, exported)


@dataclasses.dataclass
class Slot:
    label: str
    actor: object
    info: dict = None          # what `start` returned (None while it loads)
    busy: bool = False


class RayPool:
    """The pool of `search.workers` actors; see the module docstring."""
    on_dispatch = None          # called (pool, slot, job) once a job is sent to a worker (tests kill it there)

    def __init__(self, cfg, log):
        self.ray, self.cfg, self.log = connect(cfg), cfg, log
        s = cfg.search
        self.workers, gpu = s.workers, cfg.device.startswith("cuda")
        res = self.ray.cluster_resources()
        # a CPU worker reserves a core per torch thread (more threads than cores slows every worker many
        # times over); a GPU worker reserves its GPU and one core
        cpus = 1 if gpu else s.threads
        if gpu and res.get("GPU", 0) < s.workers:
            raise PoolError(f"search.workers: {s.workers} workers on device {cfg.device} need {s.workers} GPUs (one "
                            f"each); the Ray cluster has {int(res.get('GPU', 0))}")
        if res.get("CPU", 0) < s.workers * cpus:
            raise PoolError(
                f"search.workers {s.workers} x search.threads {s.threads} = {s.workers * s.threads} CPU threads; the "
                f"Ray cluster has {int(res.get('CPU', 0))} cores. Lower search.threads (--threads; a run computes the "
                "same bits with any number of workers, but not with another thread count) or search.workers")
        # a worker sees only the GPU Ray gives it, as cuda:0
        self.remote_cfg = dataclasses.replace(cfg, device="cuda" if gpu else cfg.device).to_dict()
        self.actor_cls = self.ray.remote(Worker).options(num_cpus=cpus, num_gpus=1 if gpu else 0,
                                                         max_restarts=0, max_task_retries=0)
        self.slots, self.made, self._starting = [], 0, {}
        try:
            for _ in range(s.workers):
                self._spawn()
            from ray.exceptions import RayActorError
            for fut, slot in list(self._starting.items()):
                try:
                    slot.info = self._get(fut)
                except RayActorError as e:
                    raise RunFailed(f"Ray worker {slot.label} died while loading the run's inputs "
                                    f"({type(e).__name__}: {str(e)[:300]})") from None
            self._starting.clear()
            first = self.slots[0]
            for line in first.info["log"]:
                log(line)
            for sl in self.slots:
                log(f"worker {sl.label}: pid {sl.info['pid']} on {sl.info['host']}, {sl.info['threads']} CPU "
                    f"thread{'s' * (sl.info['threads'] != 1)}, loaded in {sl.info['load_s']:.1f} s")
            self.space, self.task, self.labels = self.ray.get(first.actor.describe.remote())
        except BaseException:
            self.close()
            raise
        self.load_s = max(sl.info["load_s"] for sl in self.slots)

    # -- workers
    def _spawn(self) -> Slot:
        """Start one more worker (it loads in the background, its start future in `_starting`)."""
        if self.made >= 4 * self.workers + MAX_DEATHS:
            raise RunFailed(f"the Ray pool's workers keep dying ({self.made - self.workers} replaced); "
                            "see the messages above")
        slot = Slot(f"w{self.made}", self.actor_cls.remote())
        self.made += 1
        self.slots.append(slot)
        self._starting[slot.actor.start.remote(self.remote_cfg)] = slot
        return slot

    def _get(self, fut):
        """ray.get, with a job's own exception raised as itself (an input error reads as it would
        without Ray)."""
        from ray.exceptions import RayTaskError
        try:
            return self.ray.get(fut)
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise

    def _dead(self, slot, why: str, job=None):
        self.slots.remove(slot)
        self.ray.kill(slot.actor)
        what = f" while {job.what}" if job is not None else " while loading"
        self.log(f"worker {slot.label} died{what} ({why}); "
                 f"{'the job goes to another worker; ' if job is not None else ''}a new worker replaces it")
        self._spawn()

    # -- jobs
    def _run(self, jobs):
        """Run jobs (SimpleNamespace: key, method, args, what, give_up) on free workers, one per worker at
        a time; yields (key, result) as each finishes."""
        from ray.exceptions import RayActorError, WorkerCrashedError
        queue, inflight = collections.deque(jobs), {}
        deaths = collections.Counter()
        while queue or inflight:
            for slot in self.slots:
                if queue and not slot.busy and slot.info is not None:
                    job = queue.popleft()
                    inflight[getattr(slot.actor, job.method).remote(*job.args)] = (slot, job)
                    slot.busy = True
                    if RayPool.on_dispatch is not None:
                        RayPool.on_dispatch(self, slot, job)
            waiting = list(inflight) + list(self._starting)
            if not waiting:
                raise RunFailed("every worker of the Ray pool is gone and none could be started again")
            (fut,), _ = self.ray.wait(waiting, num_returns=1)
            if fut in self._starting:
                slot = self._starting.pop(fut)
                try:
                    slot.info = self.ray.get(fut)
                    self.log(f"worker {slot.label} ready (pid {slot.info['pid']} on {slot.info['host']})")
                except (RayActorError, WorkerCrashedError) as e:
                    self._dead(slot, type(e).__name__)
                continue
            slot, job = inflight.pop(fut)
            try:
                result = self._get(fut)
            except (RayActorError, WorkerCrashedError) as e:
                deaths[job.key] += 1
                self._dead(slot, type(e).__name__, job)
                if deaths[job.key] >= MAX_DEATHS:
                    yield job.key, job.give_up(f"its worker process died {MAX_DEATHS} times while {job.what}")
                else:
                    queue.appendleft(job)
                continue
            slot.busy = False
            yield job.key, (result, slot.label)

    def _ordered(self, jobs):
        """_run's results in the jobs' order (each as soon as every earlier one is in)."""
        done, nxt = {}, 0
        for key, value in self._run(jobs):
            done[key] = value
            while nxt in done:
                yield done.pop(nxt)
                nxt += 1

    def evaluate(self, jobs):
        def give_up(msg):
            return ({"merge_s": None, "eval_s": None, "error": f"WorkerDied: {msg}", "score": None, "items": 0,
                     "tokens": 0}, None)
        todo = [SimpleNamespace(key=k, method="evaluate", args=(job[1], job[2]),
                                what=f"scoring candidate {job[0]}", give_up=give_up) for k, job in enumerate(jobs)]
        for rec, label in self._ordered(todo):
            yield {**rec, "worker": label}

    def _one_job(self, method, args, what):
        def give_up(msg):
            raise RunFailed(f"the Ray pool could not finish {what}: {msg}")
        return next(self._ordered([SimpleNamespace(key=0, method=method, args=args, what=what, give_up=give_up)]))

    def export_best(self, best: dict, folder):
        self._one_job("export_best", (best, str(Path(folder).resolve())), "exporting the best recipe")

    def score_models(self, exported):
        def give_up(msg):
            raise RunFailed(f"the Ray pool could not score the report's models: {msg}")
        exported = str(Path(exported).resolve())
        todo = [SimpleNamespace(key=k, method="score", args=(label, exported), what=f"scoring {label}",
                                give_up=give_up) for k, label in enumerate(self.labels)]
        for label, (rows, _) in zip(self.labels, self._ordered(todo)):
            yield label, rows

    def close(self):
        for slot in getattr(self, "slots", []):
            try:
                self.ray.kill(slot.actor)
            except Exception:       # already gone
                pass
        self.slots = []
        if _started:
            self.ray.shutdown()
            _started.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
