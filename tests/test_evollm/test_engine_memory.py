"""One engine, two sinks: an in-memory candidate equals what `evollm merge` writes for the same recipe and
seed, bit for bit, for every method family, parameter form and way of holding the inputs."""

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from evollm.cli import main
from evollm.engine.disk import MergeError
from evollm.engine.memory import InMemoryMerger
from evollm.recipe import load_recipe
from evollm.search.space import ParamSpace
from helpers import family

W = {"ft0": 0.7, "ft1": 1.3}
CASES = {
    "ties": ("ties", {"ft0": {"weight": 0.6, "density": 0.5}, "ft1": {"weight": 0.4, "density": 0.3}}, {}),
    "ties normalized, l1 rescale, lambda": ("ties", {"ft0": {"weight": 0.6, "density": 0.5},
                                                     "ft1": {"weight": 0.4, "density": 0.3}},
                                            {"rescale": True, "lambda": 0.8}),
    "dare_ties": ("dare_ties", {"ft0": {"weight": 0.7, "density": 0.4}, "ft1": {"weight": 1.3, "density": 0.6}},
                  {"normalize": False}),
    "dare_ties normalized": ("dare_ties", {"ft0": {"weight": 0.7, "density": 0.4},
                                           "ft1": {"weight": 1.3, "density": 0.6}}, {"normalize": True}),
    "dare_linear density rescale": ("dare_linear", {"ft0": {"weight": 0.5, "density": 0.3},
                                                    "ft1": {"weight": 0.5, "density": 0.8}}, {"rescale": "density"}),
    "della": ("della", {"ft0": {"weight": 1.0, "density": 0.5, "epsilon": 0.1},
                        "ft1": {"weight": 0.6, "density": 0.4}}, {}),
    "della_linear": ("della_linear", {"ft0": {"weight": 0.5, "density": 0.5},
                                      "ft1": {"weight": 0.5, "density": 0.6}}, {"rescale": "density"}),
    "breadcrumbs_ties": ("breadcrumbs_ties", {"ft0": {"weight": 1.0, "density": 0.8, "gamma": 0.02},
                                              "ft1": {"weight": 0.5, "density": 0.9}}, {}),
    "task_arithmetic": ("task_arithmetic", {"ft0": {"weight": 1.0}, "ft1": {"weight": 0.5}}, {}),
    # layer gradients and name filters resolve per tensor exactly as the exported recipe's; a density of
    # 0 and of 1 on some tensors
    "dare_ties layered": ("dare_ties", {
        "ft0": {"weight": [0.2, 0.9], "density": [{"filter": "mlp", "value": 0.3}, {"value": [0.0, 1.0]}]},
        "ft1": {"weight": [{"filter": "lm_head", "value": 0.1}, {"value": [1.0, 0.4]}], "density": 0.5}},
        {"normalize": False}),
}


def export(tmp_path, base, paths, method, per, glob, seed=7, dtype="float32"):
    recipe = {"merge_method": method, "base_model": base, "dtype": dtype,
              "models": [{"model": paths[n], "parameters": per[n]} for n in ("ft0", "ft1")]}
    if glob:
        recipe["parameters"] = glob
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["merge", "--recipe", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"),
                 "--seed", str(seed), "--quiet"]) == 0
    return load_file(str(tmp_path / "out" / "model.safetensors"))


@pytest.fixture(scope="module")
def fams(tmp_path_factory):
    f32 = family(tmp_path_factory.mktemp("f32"), "llama")
    bf16 = family(tmp_path_factory.mktemp("bf16"), "llama", dtype=torch.bfloat16)
    return {"float32": f32, "bfloat16": bf16}


def state(paths):
    return {n: load_file(f"{p}/model.safetensors") for n, p in zip(("base", "ft0", "ft1"), paths)}


@pytest.mark.parametrize("hold", ["task vectors", "task vectors, masks hashed per merge", "sources float32",
                                  "sources bfloat16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_in_memory_merge_equals_the_exported_merge(tmp_path, fams, case, hold):
    method, per, glob = CASES[case]
    store = torch.bfloat16 if hold == "sources bfloat16" else torch.float32
    paths = fams["bfloat16" if store == torch.bfloat16 else "float32"]
    exported = export(tmp_path, paths[0], dict(zip(("ft0", "ft1"), paths[1:])), method, per, glob)
    model = AutoModelForCausalLM.from_pretrained(paths[0], dtype=torch.float32)
    sd = state(paths)
    merger = InMemoryMerger(model, sd["base"], {"ft0": sd["ft0"], "ft1": sd["ft1"]}, store_dtype=store,
                            task_vectors=hold.startswith("task vectors"), hold_masks=hold == "task vectors")
    assert bool(merger.deltas) == hold.startswith("task vectors")
    for _ in range(2):                       # the held inputs and reused scratch change nothing
        merged = merger.merge(method, glob, per, seed=7)
        for k, v in merged.state_dict().items():
            assert torch.equal(v, exported[k].float()), k
    # merging never writes into what the merger holds
    assert bool(merger._uniforms) == (hold == "task vectors" and "dare" in method)
    k = "model.layers.1.mlp.up_proj.weight"
    if hold.startswith("task vectors"):
        assert torch.equal(merger.deltas["ft0"][k], sd["ft0"][k].float() - sd["base"][k].float())
    else:
        assert torch.equal(merger.held["ft0"][k], sd["ft0"][k].to(store))


def test_a_search_candidate_is_its_exported_recipe(tmp_path, fams):
    """A PS candidate with layer groups (per-layer lists) is merged from the very recipe the search exports."""
    paths = fams["float32"]
    refs = {"ft0": paths[1], "ft1": paths[2]}
    space = ParamSpace(["ft0", "ft1"], refs, paths[0], "dare_ties",
                       {"weight": {"low": 0.0, "high": 1.0, "init": 0.5},
                        "density": {"low": 0.1, "high": 1.0, "init": 0.5}},
                       fixed={"normalize": True}, layer_groups=2, n_layers=4, dtype="float32",
                       out_dtype="float32")
    x = np.random.RandomState(0).rand(space.dim)
    recipe = space.recipe(x)
    assert isinstance(recipe.models[0].parameters["weight"], list)
    (tmp_path / "r.yaml").write_text(recipe.to_yaml())
    assert main(["merge", "--recipe", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"),
                 "--seed", "3", "--quiet"]) == 0
    exported = load_file(str(tmp_path / "out" / "model.safetensors"))
    sd = state(paths)
    model = AutoModelForCausalLM.from_pretrained(paths[0], dtype=torch.float32)
    merger = InMemoryMerger(model, sd["base"], {"ft0": sd["ft0"], "ft1": sd["ft1"]}, refs=refs,
                            base_ref=paths[0])
    merged = merger.merge_recipe(space.recipe_of(space.decode(x)), seed=3)
    assert all(torch.equal(v, exported[k]) for k, v in merged.state_dict().items())
    other = merger.merge_recipe(recipe, seed=4)          # another seed, other masks
    assert any(not torch.equal(v, exported[k]) for k, v in other.state_dict().items())


def test_other_methods_need_the_sources(tmp_path, fams):
    """Methods outside the task-vector family (model_stock, linear with the base as one more input,
    slerp) merge in memory from held sources, equal to their exports."""
    paths = fams["float32"]
    sd = state(paths)
    refs = {"ft0": paths[1], "ft1": paths[2]}
    model = AutoModelForCausalLM.from_pretrained(paths[0], dtype=torch.float32)
    with_tv = InMemoryMerger(model, sd["base"], {"ft0": sd["ft0"], "ft1": sd["ft1"]})
    with pytest.raises(MergeError, match="holds task vectors"):
        with_tv.merge("model_stock", {}, {})
    merger = InMemoryMerger(model, sd["base"], {"ft0": sd["ft0"], "ft1": sd["ft1"]}, task_vectors=False,
                            refs=refs, base_ref=paths[0])
    one = InMemoryMerger(model, sd["base"], {"ft0": sd["ft0"]}, task_vectors=False, refs=refs, base_ref=paths[0])
    recipes = {
        "model_stock": (merger, {"merge_method": "model_stock", "base_model": paths[0],
                                 "models": [{"model": paths[1]}, {"model": paths[2]}]}),
        "linear": (merger, {"merge_method": "linear", "models": [
            {"model": paths[1], "parameters": {"weight": 0.3}}, {"model": paths[0], "parameters": {"weight": 0.5}},
            {"model": paths[2], "parameters": {"weight": [0.2, 0.9]}}]}),
        "slerp": (one, {"merge_method": "slerp", "base_model": paths[0], "models": [{"model": paths[1]}],
                        "parameters": {"t": [0.0, 0.5, 1.0]}}),
    }
    for name, (m, r) in recipes.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(r))
        assert main(["merge", "--recipe", str(tmp_path / f"{name}.yaml"), "--out", str(tmp_path / name), "--quiet"]) == 0
        exported = load_file(str(tmp_path / name / "model.safetensors"))
        merged = m.merge_recipe(load_recipe(tmp_path / f"{name}.yaml"))
        assert all(torch.equal(v, exported[k]) for k, v in merged.state_dict().items()), name


def test_errors_name_the_tensor_and_model(fams):
    paths = fams["float32"]
    sd = state(paths)
    model = AutoModelForCausalLM.from_pretrained(paths[0], dtype=torch.float32)
    merger = InMemoryMerger(model, sd["base"], {"ft0": sd["ft0"], "ft1": sd["ft1"]})
    with pytest.raises(ValueError, match="missing required parameter 'weight' for model ft1, tensor model.embed"):
        merger.merge("ties", {}, {"ft0": {"weight": 1.0}})
    bad = dict(sd["ft1"])
    bad["model.norm.weight"] = torch.ones(31)
    with pytest.raises(MergeError, match=r"tensor model.norm.weight: shape \(32,\) in model base but \(31,\) in model ft1"):
        InMemoryMerger(model, sd["base"], {"ft0": sd["ft0"], "ft1": bad}).merge("ties", {}, {})
    with pytest.raises(MergeError, match="tensor model.embed_tokens.weight: the merge produced NaN or inf"):
        merger.merge("task_arithmetic", {"lambda": 1e38}, {"ft0": {"weight": 1e38}, "ft1": {"weight": 1e38}})
