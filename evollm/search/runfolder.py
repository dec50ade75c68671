"""The run folder: what a run writes, how it is opened, resumed, locked and, after a failure before its
first candidate, removed; and the candidate log.

  config.yaml       the resolved config (`--resume` refuses a different one)
  run.lock          held while a process works in the folder
  candidates.jsonl  one line per candidate: genome, recipe parameters, score, timings, error
  checkpoint.pkl    after every generation, written atomically: optimizer (with its RNG), counters
  best/             recipe.yaml (mergekit-style) and model/ (a checkpoint), once the search ends
  fitness.png, path.png, report.md, report.json
  tensorboard/      live log (`search.log: tensorboard`, livelog.py)
  ps/, dfs/         a PS+DFS run's two phases, each a run folder of its own

The checkpoint is a pickle: resume only run folders you made.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
from pathlib import Path

from ..fsutil import RunLock, append_line, clean_stale, is_leftover, write_atomic
from .config import EXECUTION, ConfigError, RunConfig, config_diff, dump_config, parse_config, with_execution

RUN_FILES = ("config.yaml", "run.lock", "candidates.jsonl", "checkpoint.pkl", "best", "fitness.png", "path.png",
             "report.md", "report.json", "ps", "dfs", "tensorboard")


class RunFailed(RuntimeError):
    """The search cannot produce a result (e.g. every candidate of the first generation failed)."""


def read_candidates(path: Path) -> list:
    """Complete lines of candidates.jsonl. Only the last line may be cut (by a kill) and is dropped;
    a bad line before it means the file was damaged, and is an error naming the line."""
    out = []
    if path.exists():
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for i, line in enumerate(lines):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                if i < len(lines) - 1:
                    raise RunFailed(f"{path}: line {i + 1} is not a JSON record (the file was damaged); "
                                    "restore it, or start a new run folder") from None
    return out


def logged_candidates(out: Path) -> int:
    """How many candidates a run folder (or its PS+DFS phases) has logged."""
    return sum(len(read_candidates(p)) for p in (out / "candidates.jsonl", out / "ps" / "candidates.jsonl",
                                                  out / "dfs" / "candidates.jsonl"))


def stored_config(out: Path) -> RunConfig:
    """The config a run folder was started with (errors name the folder and what is wrong)."""
    from ..recipe import read_yaml
    stored = out / "config.yaml"
    if not stored.exists():
        raise FileNotFoundError(f"--resume: {out} is not a run folder (no config.yaml)")
    try:
        return parse_config(read_yaml(stored, "run config", ConfigError), str(stored))
    except ConfigError as e:
        raise ConfigError(f"{e}\n  the run folder {out} cannot be resumed with this config.yaml; restore it, "
                          "or start a new run folder") from None


def has_results(out: Path) -> bool:
    """Whether a run folder holds anything a new run would destroy (logged candidates, a checkpoint,
    an export) in itself or its PS+DFS phases."""
    return logged_candidates(out) > 0 or any((out / sub / n).exists() for sub in ("", "ps", "dfs")
                                             for n in ("checkpoint.pkl", "best"))


class RunFolder:
    """A run folder's life: checked before anything loads; created (and locked) only once the run's
    inputs have loaded; removed again if the run stops before its first candidate is logged.

    A new run refuses a folder that holds results (`--resume` continues it) or files that are not a
    run's; one left by a run that stopped before its first candidate is reused. `--resume` takes the
    lock first, so a second process on the same folder fails at once, naming the holder."""

    def __init__(self, out: Path, cfg: RunConfig | None, resume: bool, log=print, execution: dict = None,
                 budget: int | None = None):
        """`execution`: execution fields (config.EXECUTION, e.g. workers) that override the config's
        (a resumed run's too). `budget` (or a resumed run's --config with another `search.budget`): the
        candidates the run ends at; a resume may raise it, also for a finished run (see `set_budget`)."""
        self.out, self.resume, self.log = Path(out), resume, log
        self.lock, self.created = RunLock(self.out), False
        if resume:
            old = stored_config(self.out)
            diff = config_diff(cfg, old) if cfg is not None else []
            if diff:
                raise ConfigError(f"--resume: the config given differs from {self.out / 'config.yaml'} in {diff}; "
                                  "resume without --config, or start a new run folder")
            given = old if cfg is None else with_execution(old, **{k: getattr(cfg.search, k) for k in EXECUTION})
            self.cfg = with_execution(given, **(execution or {}))
            self.lock.acquire()
            clean_stale(self.out)
            want = budget if budget is not None else cfg.search.budget if cfg is not None else old.search.budget
            if want != old.search.budget:
                try:
                    self.cfg = self.set_budget(old, want)
                except BaseException:
                    self.lock.release()
                    raise
            return
        self.cfg = with_execution(cfg, **(execution or {}))
        if budget is not None:
            self.cfg = with_budget(self.cfg, budget)
        if not self.out.exists():
            return
        if not self.out.is_dir():
            raise FileExistsError(f"run folder {self.out} is a file; choose another --out")
        foreign = sorted(p.name for p in self.out.iterdir() if p.name not in RUN_FILES and not is_leftover(p.name))
        if foreign:
            raise FileExistsError(f"--out {self.out} already exists and holds files that are not a run's "
                                  f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); choose another --out")
        if has_results(self.out):
            raise FileExistsError(f"run folder {self.out} already exists; pass --resume to continue it, "
                                  "or choose another --out")
        self.lock.acquire()                 # fails if another process is starting a run in it right now
        self.lock.release()

    def set_budget(self, old: RunConfig, want: int) -> RunConfig:
        """A resumed run's new budget, written into its config.yaml. The budget only ends the search loop, so
        a run raised from a budget that is a whole number of generations goes on exactly as one started with
        the larger budget; a last generation cut short by the old budget stays as logged (it was not told to
        the optimizer) and the search goes on with new generations. A finished run's export and report are
        made again at the new end."""
        if old.search.space == "ps+dfs":
            raise ConfigError(f"--budget: {self.out} is a PS+DFS run, whose DFS phase started from the PS phase's "
                              "end; start a new run folder with the budget you want")
        n = logged_candidates(self.out)
        if want < n:
            raise ConfigError(f"--budget {want}: {self.out} has already logged {n} candidates; give at least {n}")
        write_atomic(self.out / "config.yaml", dump_config(with_budget(old, want)))
        cut = n % old.search.popsize if n >= old.search.budget else 0
        self.log(f"{self.out}: budget {old.search.budget} -> {want} candidates ({n} logged)"
                 + (f"; its last generation was cut to {cut} by the old budget: those stay as logged and the search "
                    "goes on with new generations" if cut and want > n else ""))
        return with_budget(self.cfg, want)

    def create(self):
        """Make the folder (after the inputs loaded): config.yaml, the lock."""
        if self.resume or self.created:
            return
        reused = self.out.is_dir() and any(self.out.iterdir())
        self.out.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        if reused:
            self.log(f"reusing {self.out}: it holds no candidates (a run that stopped before its first one)")
            for p in self.out.iterdir():
                if p.name != "run.lock":
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        write_atomic(self.out / "config.yaml", dump_config(self.cfg))
        self.created = True

    def close(self, failed: bool):
        """Release the lock; after a failure before any candidate was logged, remove what was made."""
        removed = False
        if failed and self.created and logged_candidates(self.out) == 0:
            shutil.rmtree(self.out, ignore_errors=True)
            removed = True
        self.lock.release()
        return removed


def with_budget(cfg: RunConfig, budget: int) -> RunConfig:
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise ConfigError(f"--budget must be a whole number of candidates >= 1, got {budget!r}")
    return dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, budget=budget))


def stage_folder(cfg: RunConfig, out: Path) -> RunConfig:
    """A PS+DFS phase's sub-folder: created with its config, or reopened (refusing a different config)."""
    if (out / "config.yaml").exists():
        old = stored_config(out)
        if config_diff(cfg, old):
            raise ConfigError(f"{out / 'config.yaml'}: this phase was started with another config "
                              "(was the PS phase's output changed?)")
        clean_stale(out)
        return cfg
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", dump_config(cfg))
    return cfg


class CandidateLog:
    """candidates.jsonl, appended one flushed line per candidate (a kill can cut only the last line)."""

    def __init__(self, path: Path, keep: list):
        """Open the log holding exactly `keep` (the records a resumed run goes on from)."""
        self.path = path
        write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: dict):
        append_line(self.fd, json.dumps(record, ensure_ascii=False), self.path)

    def close(self):
        os.close(self.fd)


def save_checkpoint(ckpt: Path, state: dict):
    write_atomic(ckpt, pickle.dumps(state))


def load_checkpoint(ckpt: Path) -> dict:
    try:
        with open(ckpt, "rb") as f:
            return pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as e:
        raise RunFailed(f"{ckpt}: cannot be read ({type(e).__name__}: {e}); the run folder cannot be resumed "
                        "from it: restore it, or start a new run folder") from None
