"""Data-flow-space models on tiny random Llama models: path order, per-hop KV cache, plain export."""

import warnings

import numpy as np
import pytest
import torch
from helpers import family, small
from transformers import AutoModelForCausalLM

from evollm.dfs import Hop, build_dfs_model, export_state, path_from, save_dfs, slots
from evollm.generate import cache_keyword


def test_path_follows_the_slot_order_of_each_layout():
    W = np.arange(16, dtype=float).reshape(4, 4) / 10 + 1      # 2 layers per model: candidates A0 A1 B0 B1
    assert slots(2, 2, "model-major") == [(0, 0), (0, 1), (1, 0), (1, 1)] * 2
    assert slots(2, 1, "layer-major") == [(0, 0), (1, 0), (0, 1), (1, 1)]
    on = [1, 0, 1, 1, 0, 1, 0, 0]                                 # A0, B0, B1, A1 (second repeat)
    hops = path_from(np.array(on) - 0.5, W, 2, 2, "model-major")
    assert [(h.model, h.layer) for h in hops] == [(0, 0), (1, 0), (1, 1), (0, 1)]
    # scales: W[i, j] of each step i -> j (candidates A0=0, A1=1, B0=2, B1=3); the first hop unscaled
    assert [h.scale for h in hops] == [1.0, W[0, 2], W[2, 3], W[3, 1]]
    hops = path_from([1, 1, -1, 1], W, 2, 1, "layer-major")
    assert [(h.model, h.layer) for h in hops] == [(0, 0), (1, 0), (1, 1)]
    hops = path_from([0.2, 0.9, 0.7, -0.3], W, 2, 1, "select")  # per depth: the larger indicator
    assert [(h.model, h.layer) for h in hops] == [(1, 0), (0, 1)]
    with pytest.raises(ValueError, match="slots"):
        path_from([1, 1], W, 2, 1, "model-major")
    with pytest.raises(ValueError, match="layout"):
        path_from([1] * 4, W, 2, 1, "zigzag")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("dfs")
    paths = family(root, n=2, vocab_size=64, hidden_size=32, num_hidden_layers=3)
    a, b = (AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval() for p in paths[1:])
    return a, b


HOPS = [Hop(0, 0, 1.0), Hop(0, 1, 0.8), Hop(1, 1, 1.3), Hop(0, 1, 1.1), Hop(1, 2, 0.7), Hop(0, 2, 1.2)]


def test_a_layer_visited_twice_keeps_two_cache_entries(sources):
    a, b = sources
    dfs = build_dfs_model(a, b, HOPS)          # A1 is visited twice
    ids = torch.randint(3, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cached = dfs.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
        plain = dfs.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
        assert torch.equal(cached, plain)
        # and the incremental logits equal a full forward pass
        full = dfs(cached).logits
        key = cache_keyword(dfs)
        out = dfs(cached[:, :9], use_cache=True)
        step = dfs(cached[:, 9:10], **{key: getattr(out, key)}, use_cache=True).logits
        assert torch.allclose(step[:, -1], full[:, 9], atol=1e-5)
        assert len(getattr(out, key).layers) == len(HOPS)
    # the sources' layers are shared, not copied
    assert dfs.model.layers[1].layer is a.model.layers[1] is dfs.model.layers[3].layer


def test_cached_greedy_generation_through_a_path_longer_than_the_source(sources):
    """More hops than the source has layers (A1 twice): generating with the KV cache gives the argmax
    of full forward passes at every step, and no deprecated cache keyword is passed on the way."""
    a, b = sources
    dfs = build_dfs_model(a, b, HOPS)
    assert len(HOPS) > a.config.num_hidden_layers
    ids = torch.randint(3, 64, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cached = dfs.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
        greedy = ids
        for _ in range(6):
            greedy = torch.cat([greedy, dfs(greedy).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(cached, greedy)
    assert not [str(w.message) for w in caught if "past_key_value" in str(w.message)]


def test_exported_checkpoint_matches_the_in_memory_model(sources, tmp_path):
    a, b = sources
    dfs = build_dfs_model(a, b, HOPS)
    save_dfs(a, b, HOPS, tmp_path / "out")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert plain.config.num_hidden_layers == len(HOPS)
    ids = torch.randint(3, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x, y = dfs(ids).logits, plain(ids).logits
    # equal up to RMSNorm's epsilon (1e-6 here), whose weight changes when the stream is rescaled,
    # plus float32 rounding: 1e-4 absolute on logits of size ~1
    assert torch.allclose(x, y, atol=1e-4), (x - y).abs().max()
    # unscaled hops export the layers as they are
    state, cfg = export_state(a, b, [Hop(1, 0, 1.0), Hop(0, 2, 1.0)])
    assert torch.equal(state["model.layers.0.mlp.down_proj.weight"], b.state_dict()["model.layers.0.mlp.down_proj.weight"])
    assert torch.equal(state["lm_head.weight"], a.state_dict()["lm_head.weight"]) and cfg.num_hidden_layers == 2


@pytest.mark.slow
def test_dfs_run_exports_a_plain_checkpoint_and_resumes(tmp_path, monkeypatch):
    from evollm.search.dfs_space import DfsWorkbench
    from evollm.search.run import read_candidates, run
    cfg = small(tmp_path, "world-ja-math-dfs")
    logged = []
    data = run(cfg, tmp_path / "a", progress=False, log=lambda *a: logged.append(" ".join(map(str, a))))
    out = tmp_path / "a"
    plan = [line for line in logged if line.startswith("plan: models on cpu")]     # A and B, KV per hop
    assert len(plan) == 1 and "(candidates share their layers)" in plan[0], logged
    for f in ("best/recipe.yaml", "best/model/config.json", "path.png", "report.md", "checkpoint.pkl"):
        assert (out / f).exists(), f
    recs = read_candidates(out / "candidates.jsonl")
    best = max(recs, key=lambda r: r["score"])
    path = best["parameters"]["path"]
    assert AutoModelForCausalLM.from_pretrained(out / "best" / "model").config.num_hidden_layers == len(path)
    assert data["rows"]["evolved (best/model)"]["fitness"]["score"] == best["score"]
    assert "| hop | model | layer | scale |" in (out / "report.md").read_text()
    card = (out / "best" / "model" / "README.md").read_text()       # the model card names A and B, shows the path
    from evollm.card import front_matter
    assert front_matter(card)["base_model"] == [cfg.search.dfs.a, cfg.search.dfs.b]
    assert "## Layer path (data-flow space)" in card and f"| {len(path) - 1} | {path[-1][0]} |" in card
    assert "A's layers then B's, unscaled (a frankenmerge)" in data["rows"]
    # an interrupted DFS run resumes to the same candidates
    real, calls = DfsWorkbench.evaluate_candidate, {"n": 0}

    def interrupt(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(DfsWorkbench, "evaluate_candidate", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "b", progress=False, log=lambda *a: None)
    monkeypatch.setattr(DfsWorkbench, "evaluate_candidate", real)
    run(None, tmp_path / "b", resume=True, progress=False, log=lambda *a: None)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("merge_s", "eval_s")} for r in rs]
    assert strip(read_candidates(tmp_path / "b" / "candidates.jsonl")) == strip(recs)


def test_passthrough_recipe_writes_the_same_checkpoint(sources, tmp_path):
    """Where mergekit can express the path (first and last hop from A), its passthrough recipe run by
    `evollm merge` gives the exported DFS checkpoint (scales folded the same way)."""
    import yaml

    from evollm.engine.disk import run_merge
    from evollm.recipe import parse_recipe
    from evollm.search.dfs_space import DfsSpace
    a, b = sources
    a.save_pretrained(tmp_path / "A")
    b.save_pretrained(tmp_path / "B")
    sp = DfsSpace("A", "B", {"A": str(tmp_path / "A"), "B": str(tmp_path / "B")}, 3, 2, "model-major",
                  {"low": 0.5, "high": 1.5, "init": 1.0})
    params = {"path": [["A", 0, 1.0], ["B", 1, 1.3], ["A", 1, 0.8], ["A", 2, 1.1]]}
    assert sp.passthrough_yaml({"path": [["A", 0, 1.0], ["B", 2, 1.0]]}) is None
    run_merge(parse_recipe(yaml.safe_load(sp.passthrough_yaml(params))), tmp_path / "mk", progress=False)
    save_dfs(a, b, sp.hops_of(params), tmp_path / "dfs")
    from safetensors.torch import load_file
    x, y = load_file(str(tmp_path / "mk" / "model.safetensors")), load_file(str(tmp_path / "dfs" / "model.safetensors"))
    assert set(x) == set(y) and all(torch.allclose(x[k], y[k], rtol=1e-6, atol=0) for k in x)


@pytest.mark.slow
def test_ps_then_dfs_from_one_config(tmp_path):
    from evollm.search.run import run
    cfg = small(tmp_path, "world-ja-math-ps-dfs", budget=4, report={"sources": False, "baselines": False})
    data = run(cfg, tmp_path / "run", progress=False, log=lambda *a: None)
    assert (tmp_path / "run" / "ps" / "best" / "model").is_dir() and (tmp_path / "run" / "dfs" / "path.png").exists()
    import yaml
    dfs_cfg = yaml.safe_load((tmp_path / "run" / "dfs" / "config.yaml").read_text())
    assert dfs_cfg["models"][0]["name"] == "ps-merged" and dfs_cfg["models"][1]["name"] == "ja"
    assert {"evolved (best/model)", "evolved PS+DFS (dfs/best/model)"} <= set(data["rows"])
    assert "PS+DFS" in (tmp_path / "run" / "report.md").read_text()


def test_target_scales_use_one_gene_per_layer_entered():
    from evollm.search.dfs_space import DfsSpace
    sp = DfsSpace("A", "B", {"A": "a", "B": "b"}, 2, 1, "model-major", {"low": 0.5, "high": 1.5, "init": 1.0}, "target")
    assert sp.dim == 4 + 4
    x = np.array([1, 1, 1, 0] + [0.0, 0.5, 1.0, 0.25])        # path A0 A1 B0; w = 0.5, 1.0, 1.5, 0.75
    assert [h.scale for h in sp.hops(x)] == [1.0, 1.0, 1.5]
    assert sp.decode(sp.initial())["path"] == [["A", 0, 1.0], ["A", 1, 1.0]]
