"""The evolution core: search space, config validation, a short run on the miniature world's tiny
models, failing candidates, and kill -9 + --resume giving exactly the uninterrupted run."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import ROOT, absolute

from evollm.recipe import load_recipe, parse_recipe
from evollm.search import config as C
from evollm.search.space import ParamSpace



def space(groups=1, n_layers=4):
    return ParamSpace(["ja", "m"], {"ja": "/x/ja", "m": "/x/m"}, "/x/base", "dare_ties",
                      {"weight": {"low": 0.0, "high": 2.0, "init": 0.5},
                       "density": {"low": 0.1, "high": 1.0, "init": 0.5}},
                      {"normalize": False}, groups, n_layers)


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_genome_recipe_round_trip(groups):
    sp = space(groups)
    x = np.random.RandomState(0).uniform(0, 1, sp.dim)
    recipe = parse_recipe(yaml.safe_load(sp.recipe(x).to_yaml()))       # through YAML and back
    assert np.allclose(sp.genome(recipe), x, atol=1e-5)
    p = sp.per_model(x)
    assert p == {n: s.parameters for n, s in zip(sp.names, [s for s in recipe.models])}
    if groups == 1:
        assert isinstance(p["ja"]["weight"], float) and 0 <= p["ja"]["weight"] <= 2
    else:        # one value per layer, constant within a group
        w = p["m"]["density"]
        assert len(w) == 4 and len(set(w)) == groups and all(0.1 <= v <= 1 for v in w)
    assert np.allclose(sp.per_model(sp.initial())["ja"]["density"], 0.5)


def test_genome_outside_the_box_is_clipped_and_wrong_length_refused():
    sp = space()
    p = sp.per_model([-1, 5, 0.5, 0.5])
    assert p["ja"]["weight"] == 0.0 and p["m"]["weight"] == 2.0
    with pytest.raises(ValueError, match="genome"):
        sp.per_model([0.5] * 3)


def cfg_data(**over):
    d = yaml.safe_load((ROOT / "configs" / "world-ja-math.yaml").read_text())
    for k, v in over.items():
        cur = d
        *path, last = k.split("__")
        for p in path:
            cur = cur.setdefault(p, {})
        cur[last] = v
    return d


@pytest.mark.parametrize("over,field", [
    ({"search__method": "nope"}, "search.method"),
    ({"search__params": {"weight": {"low": 1, "high": 0}}}, "search.params.weight"),
    ({"search__params": {"weight": {"init": 3}}}, "search.params.weight.init"),
    ({"search__params": {"lambda": {}}}, "search.params.lambda"),
    ({"search__fixed": {"colour": 1}}, "search.fixed.colour"),
    ({"search__popsize": 1}, "search.popsize"),
    ({"search__budget": "many"}, "search.budget"),
    ({"search__optimizer": "adam"}, "search.optimizer"),
    ({"search__threads": 0}, "search.threads"),
    ({"search__workers": 0}, "search.workers"),
    ({"search__ray_address": 5}, "search.ray_address"),
    ({"task__fitness__data": None}, "task.fitness.data"),
    ({"task__max_new_tokens": 0}, "task.max_new_tokens"),
    ({"device": "tpu"}, "device"),
    ({"models": []}, "models"),
    ({"models": ["../assets/models/ja", "../x/ja"]}, "models"),
    ({"colour": "red"}, "colour"),
    ({"search__colour": "red"}, "search.colour"),
    ({"search__log": "wandb"}, "search.log"),
    ({"license": 5}, "license"),
])
def test_bad_config_values_name_the_field(over, field):
    with pytest.raises(C.ConfigError, match=rf"RUN.yaml: .*`{field}`"):
        C.parse_config(cfg_data(**over), "RUN.yaml", ROOT / "configs")


def test_workers_are_how_a_run_executes_and_threads_what_it_computes(tmp_path):
    """A resume may change search.workers / ray_address; an unset search.threads matches the count the
    run folder recorded, a different one does not; --threads reaches search.threads."""
    import dataclasses
    stored = C.parse_config(cfg_data(search__threads=2), "RUN.yaml", ROOT / "configs")
    given = C.parse_config(cfg_data(search__workers=4, search__ray_address="auto"), "RUN.yaml", ROOT / "configs")
    assert C.config_diff(given, stored) == []
    assert C.config_diff(dataclasses.replace(given, search=dataclasses.replace(given.search, threads=1)),
                         stored) == ["search"]
    assert C.with_execution(stored, workers=3, ray_address=None).search.workers == 3
    with pytest.raises(C.ConfigError, match="--workers must be at least 1"):
        C.with_execution(stored, workers=0)
    loaded = C.load_config(ROOT / "configs" / "world-ja-math.yaml", {"search.threads": 1, "seed": 5})
    assert loaded.search.threads == 1 and loaded.seed == 5 and loaded.search.popsize == 8


def test_shipped_configs_validate():
    world = C.load_config(ROOT / "configs" / "world-ja-math.yaml")
    assert Path(world.base_model).is_dir() and all(Path(m.model).is_dir() for m in world.models)
    assert Path(world.task.test.data).is_file()
    paper = C.load_config(ROOT / "configs" / "paper-ja-math.yaml")
    assert paper.base_model == "mistralai/Mistral-7B-v0.1" and paper.search.budget == 1000
    assert [m.name for m in paper.models] == ["shisa-gamma", "wizardmath", "abel"]
    assert paper.task.test.data == "juletxara/mgsm" and paper.dtype == "bfloat16"
    vqa = C.load_config(ROOT / "configs" / "paper-vqa.yaml")
    assert vqa.task.name == "ja-vqa" and vqa.models[0].model == "llava-hf/llava-v1.6-mistral-7b-hf"
    world_vqa = C.load_config(ROOT / "configs" / "world-vqa.yaml")
    assert all(Path(m.model).is_dir() for m in world_vqa.models)


def test_the_run_config_is_frozen_and_typed():
    import dataclasses
    cfg = C.load_config(ROOT / "configs" / "world-ja-math.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.search.budget = 3
    with pytest.raises(TypeError):
        cfg.search.fixed["normalize"] = True                # read-only view
    assert cfg.search.params["weight"] == C.Bounds(0.0, 1.0, 0.5) and cfg.task.generation["num_beams"] == 1
    assert C.RunConfig.from_dict(cfg.to_dict()) == cfg     # what a run folder stores reads back the same
    assert C.parse_config(yaml.safe_load(C.dump_config(cfg)), "config.yaml") == cfg


def tiny_run_config(budget=12, popsize=4):
    d = cfg_data(search__budget=budget, search__popsize=popsize)
    d["task"]["fitness"]["limit"] = 8
    d["task"]["test"]["limit"] = 8
    d["task"]["max_new_tokens"] = 40
    return d


def write_config(tmp_path, d) -> Path:
    absolute(d)
    p = tmp_path / "RUN.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


@pytest.mark.slow
def test_short_run_writes_the_whole_run_folder(tmp_path):
    from transformers import AutoModelForCausalLM

    from evollm.search.run import read_candidates, run
    cfg = C.load_config(write_config(tmp_path, tiny_run_config()))
    data = run(cfg, tmp_path / "run", progress=False, log=lambda *a: None)
    out = tmp_path / "run"
    for f in ("config.yaml", "candidates.jsonl", "checkpoint.pkl", "best/recipe.yaml", "best/model/config.json",
              "fitness.png", "report.md", "report.json"):
        assert (out / f).exists(), f
    recs = read_candidates(out / "candidates.jsonl")
    assert [r["index"] for r in recs] == list(range(12)) and {r["generation"] for r in recs} == {1, 2, 3}
    # an unset search.threads is fixed at the start and recorded (a resume with any workers uses it)
    assert cfg.search.threads is None and C.load_config(out / "config.yaml").search.threads == torch.get_num_threads()
    assert all(r["merge_s"] > 0 and r["eval_s"] > 0 and r["error"] is None for r in recs)
    best = max(recs, key=lambda r: r["score"])
    assert data["best"]["score"] == best["score"]
    # the exported recipe is the best genome's, and the exported model scores what the search saw
    recipe = load_recipe(out / "best" / "recipe.yaml")
    assert {Path(s.model).name: s.parameters for s in recipe.models} == data["best"]["parameters"]
    assert data["rows"]["evolved (best/model)"]["fitness"]["score"] == best["score"]
    assert set(data["rows"]) >= {"ja", "math-a", "math-b", "task arithmetic 1/1/1", "TIES d=0.5", "DARE-TIES d=0.5"}
    AutoModelForCausalLM.from_pretrained(out / "best" / "model")
    md = (out / "report.md").read_text()
    assert "| evolved (best/model) |" in md and "merge" in md and "held-out" in md
    with pytest.raises(FileExistsError, match="--resume"):       # never over an existing run folder
        run(cfg, out, progress=False, log=lambda *a: None)
    # resuming the finished run reads its report back: nothing is loaded, scored or rewritten
    import evollm.search.run as run_mod
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "run.lock"}
    logged = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_mod, "open_pool", lambda *a: pytest.fail("a finished run loaded its models again"))
        again = run(None, out, resume=True, progress=False, log=logged.append)
    assert again == json.loads(json.dumps(data)) and "finished earlier" in logged[0]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "run.lock"} == before
    other = dataclasses.replace(cfg, seed=1)
    with pytest.raises(C.ConfigError, match="seed"):
        run(other, out, resume=True, progress=False, log=lambda *a: None)


def test_search_threads_fix_the_cpu_threads_every_candidate_computes_with(monkeypatch):
    """CPU float results depend on torch's thread count (measured on the world: 11% of a merge's weights
    differ by an ulp between 1 and 2 threads), so a config can fix it; the run sets it before loading."""
    import evollm.search.pool as pool_mod
    import evollm.search.workbench as wb_mod
    cfg = C.parse_config(cfg_data(search__threads=1), "RUN.yaml", ROOT / "configs")
    seen, logged = [], []

    class Loaded(Exception):
        pass

    def open_workbench(c):              # where the run starts loading models: note the threads, stop
        seen.append(torch.get_num_threads())
        raise Loaded
    monkeypatch.setattr(wb_mod, "open_workbench", open_workbench)
    before = torch.get_num_threads()
    try:
        with pytest.raises(Loaded):
            pool_mod.prepare(cfg, logged.append)
    finally:
        torch.set_num_threads(before)
    assert seen == [1] and "1 CPU threads" in logged[0]


@pytest.mark.slow
def test_a_search_over_linear_merges_the_sources_alone_as_its_export_does(tmp_path):
    """linear ignores the base: candidates are the sources' weighted sum (no base input, the sources held
    as they are, not as task vectors), every one scored, and the best's export equals it bit for bit."""
    from safetensors.torch import load_file

    from evollm.search.run import read_candidates, run
    from evollm.search.workbench import open_workbench
    d = tiny_run_config(budget=4)
    d["search"].update(method="linear", fixed={"normalize": False},
                       params={"weight": {"low": 0.0, "high": 1.0, "init": 0.5}})
    cfg = C.load_config(write_config(tmp_path, d))
    data = run(cfg, tmp_path / "run", progress=False, log=lambda *a: None)
    recs = read_candidates(tmp_path / "run" / "candidates.jsonl")
    assert all(r["error"] is None and r["score"] is not None for r in recs)
    recipe = load_recipe(tmp_path / "run" / "best" / "recipe.yaml")
    assert recipe.base_model is None and [s.parameters for s in recipe.models] == list(data["best"]["parameters"].values())
    bench = open_workbench(cfg)
    bench.ready(bench.task.rows(cfg.task.fitness, cfg.seed), log=lambda *a: None)
    model = bench.candidate(data["best"]["parameters"])
    exported = load_file(tmp_path / "run" / "best" / "model" / "model.safetensors")
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), exported[name]), name
    w = {n: v["weight"] for n, v in data["best"]["parameters"].items()}
    emb = "model.embed_tokens.weight"
    by_hand = sum(w[n] * bench.sources[n][emb].float() for n in w)
    assert torch.allclose(model.get_parameter(emb).detach(), by_hand, atol=1e-6)


@pytest.mark.slow
def test_a_failing_candidate_gets_the_worst_score_and_the_run_goes_on(tmp_path, monkeypatch):
    import torch

    from evollm.engine.memory import InMemoryMerger
    from evollm.search.run import read_candidates, run
    calls = {"n": 0}
    real = InMemoryMerger.merge_recipe             # the workbench merges each candidate's recipe

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        if calls["n"] == 3:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
            raise ValueError("merged weights contain NaN (simulated)")
        return real(self, *a, **k)

    monkeypatch.setattr(InMemoryMerger, "merge_recipe", flaky)
    d = tiny_run_config(budget=8)
    d["report"] = {"sources": False, "baselines": False}
    logs = []
    run(C.load_config(write_config(tmp_path, d)), tmp_path / "run", progress=False, log=logs.append)
    recs = read_candidates(tmp_path / "run" / "candidates.jsonl")
    assert len(recs) == 8 and [r["score"] is None for r in recs[:3]] == [False, True, True]
    assert "OutOfMemoryError" in recs[1]["error"] and "NaN" in recs[2]["error"]
    assert any("candidate 1: OutOfMemoryError" in line for line in logs)


def test_nan_weights_are_a_candidate_error(tmp_path):
    d = tiny_run_config(budget=4)
    d["search"]["params"]["weight"] = {"low": 0.0, "high": 1e300, "init": 0.9}
    d["report"] = {"sources": False, "baselines": False}
    from evollm.search.run import run
    with pytest.raises(RuntimeError, match=r"every candidate of the first generation failed \(4 of 4\).*candidate 0: MergeError.*NaN"):
        run(C.load_config(write_config(tmp_path, d)), tmp_path / "run", progress=False, log=lambda *a: None)
    rec = json.loads((tmp_path / "run" / "candidates.jsonl").read_text().splitlines()[0])
    assert rec["score"] is None and "NaN or inf" in rec["error"]


def _strip(records):
    return [{k: v for k, v in r.items() if k not in ("merge_s", "eval_s")} for r in records]


@pytest.mark.slow
def test_kill_9_then_resume_equals_the_uninterrupted_run(tmp_path):
    from evollm.search.run import read_candidates
    d = tiny_run_config(budget=20, popsize=4)
    d["report"] = {"sources": False, "baselines": False}
    cfg = write_config(tmp_path, d)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "evollm.cli", "merge", "--config", str(cfg), "--quiet"]
    subprocess.run(cmd + ["--out", str(tmp_path / "a")], check=True, env=env, capture_output=True)

    b = tmp_path / "b"
    proc = subprocess.Popen(cmd + ["--out", str(b)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:       # kill in the middle of the third generation, after two checkpoints
        deadline = time.time() + 300
        while len(read_candidates(b / "candidates.jsonl")) < 10 and time.time() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed = read_candidates(b / "candidates.jsonl")
    assert 10 <= len(killed) < 20 and not (b / "best").exists()
    subprocess.run(cmd[:-3] + ["--out", str(b), "--resume", "--quiet"], check=True, env=env, capture_output=True)

    ra, rb = read_candidates(tmp_path / "a" / "candidates.jsonl"), read_candidates(b / "candidates.jsonl")
    assert len(ra) == 20 and _strip(ra) == _strip(rb)
    assert (tmp_path / "a" / "best" / "recipe.yaml").read_text() == (b / "best" / "recipe.yaml").read_text()
    ja, jb = (json.loads((x / "report.json").read_text()) for x in (tmp_path / "a", b))
    assert ja["history"] == jb["history"] and ja["rows"] == jb["rows"]


@pytest.mark.slow
def test_a_resume_raises_a_finished_runs_budget_as_if_it_had_been_given_at_the_start(tmp_path):
    from evollm.search.run import read_candidates, run
    d = tiny_run_config(budget=8, popsize=4)
    d["report"] = {"sources": False, "baselines": False}
    cfg = C.load_config(write_config(tmp_path, d))
    quiet = lambda *a: None
    run(cfg, tmp_path / "long", progress=False, log=quiet, budget=16)
    short = tmp_path / "short"
    run(cfg, short, progress=False, log=quiet)
    assert len(read_candidates(short / "candidates.jsonl")) == 8
    with pytest.raises(C.ConfigError, match="already logged 8 candidates"):
        run(None, short, resume=True, progress=False, log=quiet, budget=5)
    logged = []
    data = run(None, short, resume=True, progress=False, log=logged.append, budget=16)
    assert any("budget 8 -> 16" in m for m in logged) and C.load_config(short / "config.yaml").search.budget == 16
    long_ = json.loads((tmp_path / "long" / "report.json").read_text())
    assert _strip(read_candidates(short / "candidates.jsonl")) == _strip(read_candidates(tmp_path / "long" / "candidates.jsonl"))
    assert data["history"] == long_["history"] and len(data["history"]) == 4
    assert (short / "best" / "recipe.yaml").read_text() == (tmp_path / "long" / "best" / "recipe.yaml").read_text()
    # a --config that differs only in its budget resumes too; a budget cut short by the old one goes on
    cut = tmp_path / "cut"
    run(dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, budget=6)), cut, progress=False, log=quiet)
    logged.clear()
    run(cfg.phase("ps", cfg.name, budget=10), cut, resume=True, progress=False, log=logged.append)
    recs = read_candidates(cut / "candidates.jsonl")
    assert len(recs) == 10 and [r["generation"] for r in recs] == [1] * 4 + [2] * 2 + [3] * 4
    assert any("cut to 2" in m for m in logged)


def test_a_source_of_another_shape_is_refused_by_name(tmp_path):
    from helpers import save_model

    from evollm.search.workbench import read_state
    save_model(tmp_path / "base")
    save_model(tmp_path / "wide", vocab_size=97)
    shapes = {k: tuple(v.shape) for k, v in read_state(str(tmp_path / "base"), {
        "model.embed_tokens.weight": (96, 32)}).items()}
    with pytest.raises(ValueError, match=r"wide.*model.embed_tokens.weight.*\(97, 32\)"):
        read_state(str(tmp_path / "wide"), shapes)
    with pytest.raises(ValueError, match=r"base.*missing.*no.such"):
        read_state(str(tmp_path / "base"), {"no.such": (1,)})


def test_init_from_a_recipe_starts_the_search_there(tmp_path):
    from evollm.search.space import ParamSpace
    d = cfg_data()
    d["search"]["init_from"] = "../assets/recipes/mgsm-ja-searched.yaml"
    d["search"]["layer_groups"] = 2
    cfg = C.parse_config(d, "RUN.yaml", ROOT / "configs")
    sp = ParamSpace.of(cfg, 4)
    x0 = sp.genome(load_recipe(cfg.search.init_from))
    per = sp.per_model(x0)
    given = {m.model.rsplit("/", 1)[-1]: m.parameters for m in load_recipe(cfg.search.init_from).models}
    assert per["ja"]["weight"] == [given["ja"]["weight"]] * 4
    assert per["math-b"]["density"] == [given["math-b"]["density"]] * 4
    d["search"]["init_from"] = "nope.yaml"
    with pytest.raises(C.ConfigError, match="search.init_from"):
        C.parse_config(d, "RUN.yaml", ROOT / "configs")


def test_the_readme_config_block_is_the_default_config():
    import re
    block = re.search(r"The config \(`configs/world-ja-math.yaml`.*?```yaml\n(.*?)```", (ROOT / "README.md").read_text(),
                      re.S).group(1)
    assert C.parse_config(yaml.safe_load(block), "README", ROOT / "configs") == \
        C.load_config(ROOT / "configs" / "world-ja-math.yaml")


def test_resume_takes_workers_but_not_threads_from_the_command_line(tmp_path, capsys):
    from evollm.cli import main
    assert main(["merge", "--out", str(tmp_path / "x"), "--resume", "--threads", "1"]) == 2
    assert "--threads would change it" in capsys.readouterr().err
    assert main(["merge", "--out", str(tmp_path / "x"), "--resume", "--workers", "2"]) == 2   # no such run
    assert "is not a run folder" in capsys.readouterr().err
    assert main(["merge", "--recipe", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "m"), "--budget", "9"]) == 2
    assert "--budget belong to an evolution run" in capsys.readouterr().err
