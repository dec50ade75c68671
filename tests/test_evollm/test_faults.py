"""Faults a user can cause, tried on real processes where it matters: Ctrl-C and SIGTERM, SIGKILL during
an export, two processes on one run folder, a full disk (a small tmpfs, where this machine lets us mount
one), runs whose candidates fail, inputs that must not leave a run folder behind. Each case checks the
exit status, the message, and the state of the folders afterwards (docs/faults.md lists them)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, small

from evollm.search.run import read_candidates

ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
EVOLLM = [sys.executable, "-m", "evollm.cli"]
MODELS = ROOT / "assets" / "models"


def config(tmp_path, budget=8, popsize=4) -> Path:
    small(tmp_path, "world-ja-math", budget=budget, popsize=popsize, items=4, max_new_tokens=16,
          report={"sources": False, "baselines": False})
    return tmp_path / "RUN.yaml"


def cli(*args, timeout=600):
    return subprocess.run(EVOLLM + [str(a) for a in args], env=ENV, capture_output=True, text=True, timeout=timeout)


def start(*args):
    # SIGINT back to its default in the child: a runner that starts the suite in the background (a shell
    # without job control) passes SIGINT on ignored, and Python would then never raise KeyboardInterrupt
    return subprocess.Popen(EVOLLM + [str(a) for a in args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(cond, proc=None, timeout=300):
    deadline = time.time() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended first (rc {proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def indices(run: Path) -> list:
    return [r["index"] for r in read_candidates(run / "candidates.jsonl")]


def lock_is_free(run: Path) -> bool:
    from evollm.fsutil import RunLock
    try:
        RunLock(run).acquire().release()
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130)])
def test_ctrl_c_mid_run_loses_nothing_and_prints_the_resume_command(tmp_path, sig, code):
    run = tmp_path / "run"
    proc = start("merge", "--config", config(tmp_path), "--out", run, "--quiet")
    wait_for(lambda: len(read_candidates(run / "candidates.jsonl")) >= 2, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "nothing was lost" in err and f"evollm merge --out {run} --resume" in err
    assert "Traceback" not in err and "Loading weights" not in err and "Generating" not in err   # --quiet
    logged = indices(run)
    assert logged == list(range(len(logged))) and lock_is_free(run) and not (run / "best").exists()
    r = cli("merge", "--out", run, "--resume", "--quiet")
    assert r.returncode == 0, r.stderr
    assert indices(run) == list(range(8)) and (run / "best" / "model" / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_before_the_first_candidate_leaves_no_run_folder(tmp_path, sig, code):
    run = tmp_path / "run"
    proc = start("merge", "--config", config(tmp_path), "--out", run, "--quiet")
    wait_for(lambda: "loading" in proc.stdout.readline(), proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "interrupted before the first candidate; no run folder was left" in err
    assert not run.exists() and "Traceback" not in err


KILL_DURING_EXPORT = """
import os, signal, sys
import evollm.checkpoint as c
write = c.ShardedWriter.write
def dying(self, name, tensor):
    write(self, name, tensor)
    if self._next == 5:                   # five tensors on disk, then the process is killed
        os.kill(os.getpid(), signal.SIGKILL)
c.ShardedWriter.write = dying
from evollm.cli import main
main(sys.argv[1:])
"""


def recipe(tmp_path) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump({"merge_method": "task_arithmetic", "base_model": str(MODELS / "base"),
                                 "models": [{"model": str(MODELS / n), "parameters": {"weight": 0.5}}
                                            for n in ("ja", "math-a")], "dtype": "float32"}))
    return p


@pytest.mark.slow
def test_sigkill_during_an_export_leaves_a_temporary_that_the_next_export_removes(tmp_path):
    out = tmp_path / "merged"
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_EXPORT, "merge", "--recipe", str(recipe(tmp_path)),
                           "--out", str(out), "--quiet"], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".merged.tmp-")]
    assert len(left) == 1 and (left[0] / "model.safetensors").exists() and not out.exists()
    r = cli("merge", "--recipe", recipe(tmp_path), "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr
    assert f"removed {left[0]}" in r.stderr and "left by an interrupted write of process" in r.stderr
    assert not left[0].exists() and (out / "model.safetensors").exists()


@pytest.mark.slow
def test_a_second_resume_of_a_busy_run_folder_is_refused_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    first = start("merge", "--config", config(tmp_path), "--out", run, "--quiet")
    wait_for(lambda: len(read_candidates(run / "candidates.jsonl")) >= 1, first)
    first.kill()
    first.wait()
    before = indices(run)
    holder = start("merge", "--out", run, "--resume", "--quiet")
    wait_for(lambda: (run / "run.lock").read_text().startswith(f"{holder.pid} "), holder)
    t0 = time.time()
    second = cli("merge", "--out", run, "--resume", "--quiet")
    assert second.returncode == 2 and time.time() - t0 < 60
    assert f"run folder {run} is in use by process {holder.pid}" in second.stderr and "kill" in second.stderr
    holder.send_signal(signal.SIGINT)
    _, err = holder.communicate(timeout=120)
    assert holder.returncode == 130, err
    assert indices(run)[:len(before)] == before and lock_is_free(run)


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs (a small disk to fill) needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"this machine does not let us mount a tmpfs: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_is_named_and_the_run_resumes_once_there_is_space(tmp_path, tmpfs):
    # a merge that needs more than the disk has: refused before writing, nothing left behind
    r = cli("merge", "--recipe", recipe(tmp_path), "--out", tmpfs / "merged", "--quiet")
    assert r.returncode == 2 and "not enough disk space for the checkpoint" in r.stderr
    assert re.search(rf"{tmpfs / 'merged'}: it needs about \d+\.\d MB, 1\.0 MB is free", r.stderr)
    assert "Errno" not in r.stderr and not list(tmpfs.iterdir())
    # a run on a disk with a few KB free: fails while writing its log or checkpoint, naming it
    filler = tmpfs / "filler"
    free = os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize
    filler.write_bytes(b"\0" * (free - 24_000))     # the log fits; the checkpoint does not
    run = tmpfs / "run"
    r = cli("merge", "--config", config(tmp_path), "--out", run, "--quiet")
    assert r.returncode == 2 and f"no space left on the disk while writing {run}/" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    logged = indices(run)
    assert logged, r.stderr
    filler.unlink()
    # more space, not yet enough for the export: the search ends, the export is refused by name
    r = cli("merge", "--out", run, "--resume", "--quiet")
    assert r.returncode == 2 and f"not enough disk space for the checkpoint {run}/best/model" in r.stderr, r.stderr
    assert indices(run) == list(range(8)) and indices(run)[:len(logged)] == logged
    subprocess.run(["mount", "-o", "remount,size=64m", str(tmpfs)], check=True)
    r = cli("merge", "--out", run, "--resume", "--quiet")
    assert r.returncode == 0, r.stderr
    assert indices(run) == list(range(8)) and (run / "best" / "model" / "model.safetensors").exists()
    assert not [p for p in run.rglob(".*tmp-*")]


def flaky_candidates(monkeypatch, fail):
    """Make candidate number n (in evaluation order) fail when fail(n)."""
    from evollm.search.workbench import Workbench
    real, calls = Workbench.evaluate_candidate, {"n": -1}

    def patched(self, params, rows):
        calls["n"] += 1
        if fail(calls["n"]):
            kind = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" if calls["n"] % 2 else \
                f"ValueError: merged weights contain NaN in model.layers.{calls['n'] % 4}.mlp.up_proj.weight"
            return {"merge_s": None, "eval_s": None, "error": kind, "score": None}
        return real(self, params, rows)
    monkeypatch.setattr(Workbench, "evaluate_candidate", patched)


def test_a_mostly_failing_run_says_so_and_exits_non_zero(tmp_path, monkeypatch, capsys):
    from evollm.cli import main
    flaky_candidates(monkeypatch, lambda n: n >= 1)
    run = tmp_path / "run"
    assert main(["merge", "--config", str(config(tmp_path)), "--out", str(run), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert "7 of 8 candidates failed" in err and "most candidates failed (7 of 8)" in err
    assert "- 4 x RuntimeError: CUDA out of memory" in err and "- 3 x ValueError: merged weights contain NaN" in err
    report = (run / "report.md").read_text()
    assert "7 of 8 candidates failed" in report and json.loads((run / "report.json").read_text())["failures"]["failed"] == 7


@pytest.mark.slow
def test_a_first_generation_that_fails_entirely_stops_and_resume_runs_it_again(tmp_path, monkeypatch, capsys):
    from evollm.cli import main
    flaky_candidates(monkeypatch, lambda n: True)
    run = tmp_path / "run"
    assert main(["merge", "--config", str(config(tmp_path)), "--out", str(run), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "every candidate of the first generation failed (4 of 4)" in err
    assert "the first, candidate 0: ValueError: merged weights contain NaN in model.layers.0" in err
    assert f"evollm merge --out {run} --resume" in err and not (run / "best").exists()
    assert indices(run) == [0, 1, 2, 3]
    monkeypatch.undo()
    assert main(["merge", "--out", str(run), "--resume", "--quiet"]) == 0
    recs = read_candidates(run / "candidates.jsonl")
    assert [r["index"] for r in recs] == list(range(8)) and all(r["error"] is None for r in recs)
    assert [r["generation"] for r in recs] == [1] * 4 + [2] * 4


@pytest.mark.parametrize("field,value,message", [
    ("models", ["../assets/models/ja", "../assets/models/nope"], "assets/models/nope: no such folder"),
    ("base_model", "../assets/models/nope", "assets/models/nope: no such folder"),
    ("task.fitness.data", "../assets/data/mgsm-ja/nope.jsonl", "nope.jsonl: no such data file"),
])
def test_a_bad_input_is_named_and_leaves_no_run_folder(tmp_path, capsys, field, value, message):
    from evollm.cli import main
    d = yaml.safe_load((ROOT / "configs" / "world-ja-math.yaml").read_text())
    *path, last = field.split(".")
    cur = d
    for k in path:
        cur = cur[k]
    cur[last] = value
    (tmp_path / "configs").mkdir()
    (tmp_path / "assets").symlink_to(ROOT / "assets")
    cfg = tmp_path / "configs" / "RUN.yaml"
    cfg.write_text(yaml.safe_dump(d))
    run = tmp_path / "run"
    assert main(["merge", "--config", str(cfg), "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not run.exists()


def test_resume_of_a_folder_with_a_corrupt_config_names_the_file(tmp_path, capsys):
    from evollm.cli import main
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: [unclosed\nseed: 0\n")
    assert main(["merge", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'config.yaml'}: malformed YAML" in err and "cannot be resumed" in err
    (run / "config.yaml").write_bytes(b"\xff\xfe\x00garbage")
    assert main(["merge", "--out", str(run), "--resume"]) == 2
    assert "not UTF-8 text" in capsys.readouterr().err
    (run / "config.yaml").write_text("- a list\n- not a config\n")
    assert main(["merge", "--out", str(run), "--resume"]) == 2
    assert "must be a mapping" in capsys.readouterr().err


def test_a_folder_that_is_not_a_run_is_never_used_as_one(tmp_path, capsys):
    from evollm.cli import main
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    assert main(["merge", "--config", str(config(tmp_path)), "--out", str(mine), "--quiet"]) == 2
    assert "holds files that are not a run's (thesis.tex)" in capsys.readouterr().err
    assert (mine / "thesis.tex").read_text() == "precious" and sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    assert main(["merge", "--out", str(mine), "--resume"]) == 2
    assert "is not a run folder (no config.yaml)" in capsys.readouterr().err


@pytest.mark.slow
def test_device_and_seed_on_the_command_line_replace_the_configs(tmp_path, capsys):
    """`--config` with `--seed`/`--device`: the run uses them (its config.yaml says so); a bad value is
    named with where it came from; `--resume` without `--config` refuses them (they would change the run)."""
    from evollm.cli import main
    run = tmp_path / "run"
    assert main(["merge", "--config", str(config(tmp_path, budget=4)), "--seed", "7", "--device", "cpu",
                 "--out", str(run), "--quiet"]) == 0
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored["seed"] == 7 and stored["device"] == "cpu"
    capsys.readouterr()
    assert main(["merge", "--config", str(tmp_path / "RUN.yaml"), "--device", "tpu", "--out",
                 str(tmp_path / "other"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "RUN.yaml (with device: tpu from the command line): `device`" in err and not (tmp_path / "other").exists()
    assert main(["merge", "--out", str(run), "--resume", "--seed", "8", "--quiet"]) == 2
    assert "--seed would change it" in capsys.readouterr().err
