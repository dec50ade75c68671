"""Scale-out with Ray (evollm.search.raypool), on a local Ray cluster of this machine's CPUs: a run with
2 workers logs exactly the candidates of a run without Ray and finds the same best recipe and report; a
worker whose process is killed mid-candidate is replaced and the run still ends identical; a run folder
made with one worker count resumes with another."""

import dataclasses
import json
import os
import signal
import sys

import pytest
from helpers import small

from evollm.search import config as C
from evollm.search.raypool import PoolError, RayPool
from evollm.search.run import read_candidates, run

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
QUIET = dict(progress=False, log=lambda *a: None)


@pytest.fixture(scope="module")
def cluster():
    """One local Ray instance (2 CPUs) for the module's runs (a pool joins it and leaves it running)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    """The world's default run, short (8 candidates on 30 items: seed 3 scores vary), 1 CPU thread."""
    c = small(tmp_path_factory.mktemp("cfg"), "world-ja-math", budget=8, popsize=4, items=30, max_new_tokens=48)
    return dataclasses.replace(c, seed=3, search=dataclasses.replace(c.search, threads=1))


@pytest.fixture(scope="module")
def serial(cfg, tmp_path_factory):
    """The run without Ray (this process, 1 thread)."""
    out = tmp_path_factory.mktemp("serial") / "run"
    data = run(cfg, out, **QUIET)
    return out, data


def strip(records):
    return [{k: v for k, v in r.items() if k not in ("merge_s", "eval_s", "worker")} for r in records]


def assert_same_run(a, b):
    ra, rb = (read_candidates(x / "candidates.jsonl") for x in (a, b))
    assert len(ra) == 8 and strip(ra) == strip(rb)
    assert (a / "best" / "recipe.yaml").read_text() == (b / "best" / "recipe.yaml").read_text()
    ja, jb = (json.loads((x / "report.json").read_text()) for x in (a, b))
    assert ja["history"] == jb["history"] and ja["rows"] == jb["rows"]
    assert strip([ja["best"]]) == strip([jb["best"]])
    return rb


def test_two_workers_log_exactly_the_serial_runs_candidates(cluster, cfg, serial, tmp_path):
    out, lines = tmp_path / "run", []
    data = run(cfg, out, progress=False, log=lines.append, execution={"workers": 2})
    recs = assert_same_run(serial[0], out)
    assert len({r["score"] for r in recs}) > 1                 # the scores vary: the comparison means something
    assert {r["worker"] for r in recs} == {"w0", "w1"}         # both workers took candidates
    assert data["workers"] == 2 and serial[1]["workers"] == 1
    assert sum("worker w" in line and "1 CPU thread," in line for line in lines) == 2
    assert C.load_config(out / "config.yaml").search.workers == 2


def test_a_worker_killed_mid_candidate_is_replaced_and_the_run_ends_identical(cluster, cfg, serial, tmp_path,
                                                                              monkeypatch):
    killed = []

    def kill(pool, slot, job):          # SIGKILL the worker's process once it holds candidate 5
        if job.what == "scoring candidate 5" and not killed:
            killed.append(slot.label)
            os.kill(slot.info["pid"], signal.SIGKILL)
    monkeypatch.setattr(RayPool, "on_dispatch", kill)
    out, lines = tmp_path / "run", []
    run(cfg, out, progress=False, log=lines.append, execution={"workers": 2})
    recs = assert_same_run(serial[0], out)
    assert [r["index"] for r in recs] == list(range(8))        # no candidate logged twice
    assert any(f"worker {killed[0]} died while scoring candidate 5" in line for line in lines)
    assert any(line.startswith("worker w2 ready") for line in lines)     # its replacement
    assert recs[5]["worker"] != killed[0]


def test_a_candidate_that_keeps_killing_its_workers_fails_alone(cluster, cfg, tmp_path, monkeypatch):
    from evollm.search.raypool import MAX_DEATHS

    def kill(pool, slot, job):
        if job.what == "scoring candidate 2":
            os.kill(slot.info["pid"], signal.SIGKILL)
    monkeypatch.setattr(RayPool, "on_dispatch", kill)
    out, lines = tmp_path / "run", []
    short = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, budget=4),
                                report=C.ReportConfig(baselines=False, sources=False))
    run(short, out, progress=False, log=lines.append, execution={"workers": 2})
    recs = read_candidates(out / "candidates.jsonl")
    assert [r["index"] for r in recs] == [0, 1, 2, 3]
    assert recs[2]["score"] is None and f"died {MAX_DEATHS} times" in recs[2]["error"]
    assert all(r["score"] is not None for i, r in enumerate(recs) if i != 2)
    assert sum(" died while scoring candidate 2" in line for line in lines) == MAX_DEATHS


def test_a_run_made_with_two_workers_resumes_with_one(cluster, cfg, serial, tmp_path, monkeypatch):
    def stop(pool, slot, job):          # Ctrl-C in the driver while candidate 6 is out
        if job.what == "scoring candidate 6":
            raise KeyboardInterrupt
    monkeypatch.setattr(RayPool, "on_dispatch", stop)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out, execution={"workers": 2}, **QUIET)
    assert 4 <= len(read_candidates(out / "candidates.jsonl")) < 8 and not (out / "best").exists()
    monkeypatch.setattr(RayPool, "on_dispatch", None)
    assert C.load_config(out / "config.yaml").search.workers == 2
    run(None, out, resume=True, execution={"workers": 1}, **QUIET)
    assert_same_run(serial[0], out)


def test_a_serial_run_resumes_with_two_workers(cluster, cfg, serial, tmp_path, monkeypatch):
    from evollm.search import pool as pool_mod
    calls = []
    real = pool_mod.LocalPool.evaluate

    def evaluate(self, jobs):           # Ctrl-C in the serial run after 5 candidates
        for rec in real(self, jobs):
            calls.append(1)
            if len(calls) > 5:
                raise KeyboardInterrupt
            yield rec
    monkeypatch.setattr(pool_mod.LocalPool, "evaluate", evaluate)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out, **QUIET)
    monkeypatch.setattr(pool_mod.LocalPool, "evaluate", real)
    assert len(read_candidates(out / "candidates.jsonl")) == 5
    run(cfg, out, resume=True, execution={"workers": 2}, **QUIET)     # same config, more workers
    recs = assert_same_run(serial[0], out)
    assert "worker" not in recs[0] and recs[7]["worker"] in ("w0", "w1")


def test_more_cpu_threads_than_the_cluster_has_is_refused_before_loading(cluster, cfg, tmp_path):
    big = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, threads=2))
    with pytest.raises(PoolError, match=r"search.workers 2 x search.threads 2 = 4 CPU threads; the Ray cluster "
                                           r"has 2 cores"):
        run(big, tmp_path / "run", execution={"workers": 2}, **QUIET)
    assert not (tmp_path / "run").exists()


def test_without_ray_more_workers_say_how_to_install_it(cfg, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)                 # `import ray` fails as if not installed
    with pytest.raises(PoolError, match=r"pip install 'evollm\[ray\]'"):
        run(cfg, tmp_path / "run", execution={"workers": 2}, **QUIET)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["world-ja-math-dfs", "world-ja-math-ps-dfs", "world-vqa", "world-vqa-dfs"])
def test_every_search_space_and_front_end_goes_through_the_pool(cluster, name, tmp_path):
    """DFS, PS+DFS and the VLM's PS and DFS: 2 workers log what one process logs."""
    c = small(tmp_path, name, budget=4, popsize=4, items=4, max_new_tokens=12,
              report={"sources": False, "baselines": False})
    c = dataclasses.replace(c, search=dataclasses.replace(c.search, threads=1))
    data = [run(c, tmp_path / f"w{n}", execution={"workers": n}, **QUIET) for n in (1, 2)]
    for sub in (("ps", "dfs") if name.endswith("ps-dfs") else ("",)):
        ra, rb = (read_candidates(tmp_path / f"w{n}" / sub / "candidates.jsonl") for n in (1, 2))
        assert len(ra) == 4 and strip(ra) == strip(rb) and {r["worker"] for r in rb} == {"w0", "w1"}
        recipes = [(tmp_path / f"w{n}" / sub / "best" / "recipe.yaml").read_text().replace(str(tmp_path / f"w{n}"), "RUN")
                   for n in (1, 2)]       # a PS+DFS recipe names its PS phase's export, in its own run folder
        assert recipes[0] == recipes[1]
    assert data[0]["rows"] == data[1]["rows"]


def test_a_raced_fitness_runs_the_same_on_two_workers(cluster, cfg, tmp_path):
    """task.fitness.schedule through the pool: each block of each live candidate is a job."""
    raced = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, fitness=dataclasses.replace(
        cfg.task.fitness, schedule=C.Schedule(block=10, confidence=0.9, select=1, tolerance=30))),
        report=C.ReportConfig(baselines=False, sources=False))
    for n in (1, 2):
        run(raced, tmp_path / f"w{n}", execution={"workers": n}, **QUIET)
    ra, rb = (read_candidates(tmp_path / f"w{n}" / "candidates.jsonl") for n in (1, 2))
    assert strip(ra) == strip(rb) and any(r["items"] < 30 for r in ra)
