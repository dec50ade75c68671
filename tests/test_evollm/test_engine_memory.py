"""In-memory candidates equal what `evollm merge` writes for the same recipe and seed."""

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from evollm.cli import main
from evollm.engine.memory import InMemoryMerger
from helpers import family

CASES = {"ties": ("ties", {"ft0": {"weight": 0.6, "density": 0.5}, "ft1": {"weight": 0.4, "density": 0.3}}),
         "dare_ties": ("dare_ties", {"ft0": {"weight": 0.7, "density": 0.4}, "ft1": {"weight": 1.3, "density": 0.6}}),
         "task_arithmetic": ("task_arithmetic", {"ft0": {"weight": 1.0}, "ft1": {"weight": 0.5}}),
         # layer gradients and name filters resolve per tensor exactly as the exported recipe's
         "dare_ties layered": ("dare_ties", {
             "ft0": {"weight": [0.2, 0.9], "density": [{"filter": "mlp", "value": 0.3}, {"value": 0.7}]},
             "ft1": {"weight": [{"filter": "lm_head", "value": 0.1}, {"value": [1.0, 0.4]}], "density": 0.5}})}


@pytest.mark.parametrize("case", sorted(CASES))
def test_in_memory_merge_equals_the_exported_merge(tmp_path, case):
    base, ft0, ft1 = family(tmp_path, "llama")
    method, per = CASES[case]
    recipe = {"merge_method": method, "base_model": base, "dtype": "float32", "parameters": {"normalize": False},
              "models": [{"model": p, "parameters": per[n]} for n, p in (("ft0", ft0), ("ft1", ft1))]}
    if method == "task_arithmetic":
        del recipe["parameters"]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["merge", "--recipe", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"),
                 "--seed", "7", "--quiet"]) == 0
    exported = load_file(str(tmp_path / "out" / "model.safetensors"))

    model = AutoModelForCausalLM.from_pretrained(base)
    sd = {n: load_file(f"{p}/model.safetensors") for n, p in (("base", base), ("ft0", ft0), ("ft1", ft1))}
    merger = InMemoryMerger(model, sd["base"], {"ft0": sd["ft0"], "ft1": sd["ft1"]})
    merged = merger.merge(method, recipe.get("parameters", {}), per, seed=7)
    for k, v in merged.state_dict().items():
        assert torch.equal(v, exported[k]), k
    # the sources are untouched by merging into the model (no aliasing)
    assert torch.equal(merger.tensors[k][0], sd["ft0"][k].float())
