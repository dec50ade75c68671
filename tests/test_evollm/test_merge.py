"""End to end: `evollm merge --recipe` on tiny random Llama/Mistral families."""

import hashlib
import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

import naive
from evollm.checkpoint import Checkpoint
from evollm.cli import main
from helpers import family, save_model


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    return family(tmp_path_factory.mktemp("llama"), "llama")


def merge(tmp_path, recipe, *extra, name="out"):
    r = tmp_path / f"{name}.yaml"
    r.write_text(yaml.safe_dump(recipe))
    out = tmp_path / name
    code = main(["merge", "--recipe", str(r), "--out", str(out), "--quiet", *extra])
    return code, out


def state(path):
    ck = Checkpoint(path)
    return {n: ck.get(n) for n in ck.names()}


RECIPES = {
    "linear": lambda b, x, y: {"models": [{"model": x, "parameters": {"weight": 0.3}},
                                          {"model": y, "parameters": {"weight": 0.7}}]},
    "task_arithmetic": lambda b, x, y: {"base_model": b, "models": [
        {"model": x, "parameters": {"weight": 0.5}}, {"model": y, "parameters": {"weight": 0.8}}]},
    "ties": lambda b, x, y: {"base_model": b, "models": [
        {"model": x, "parameters": {"weight": 0.6, "density": 0.5}},
        {"model": y, "parameters": {"weight": 0.4, "density": 0.3}}]},
    "dare_ties": lambda b, x, y: {"base_model": b, "models": [
        {"model": x, "parameters": {"weight": 0.5, "density": 0.5}},
        {"model": y, "parameters": {"weight": 0.5, "density": 0.5}}]},
    "dare_linear": lambda b, x, y: {"base_model": b, "models": [
        {"model": x, "parameters": {"weight": 0.5, "density": 0.5}},
        {"model": y, "parameters": {"weight": 0.5, "density": 0.5}}], "parameters": {"rescale": "density"}},
    "slerp": lambda b, x, y: {"base_model": b, "models": [{"model": b}, {"model": x}],
                              "parameters": {"t": [0.0, 0.5, 1.0]}},
    "breadcrumbs": lambda b, x, y: {"base_model": b, "models": [
        {"model": x, "parameters": {"weight": 1.0, "density": 0.9}},
        {"model": y, "parameters": {"weight": 1.0, "density": 0.9}}]},
    "breadcrumbs_ties": lambda b, x, y: {"base_model": b, "models": [
        {"model": x, "parameters": {"weight": 1.0, "density": 0.9, "gamma": 0.02}},
        {"model": y, "parameters": {"weight": 1.0, "density": 0.9}}]},
    "della": lambda b, x, y: {"base_model": b, "models": [
        {"model": x, "parameters": {"weight": 1.0, "density": 0.5, "epsilon": 0.1}},
        {"model": y, "parameters": {"weight": 1.0, "density": 0.5}}]},
    "della_linear": lambda b, x, y: {"base_model": b, "models": [
        {"model": x, "parameters": {"weight": 0.5, "density": 0.5}},
        {"model": y, "parameters": {"weight": 0.5, "density": 0.5}}]},
    "model_stock": lambda b, x, y: {"base_model": b, "models": [{"model": x}, {"model": y}]},
    "passthrough": lambda b, x, y: {"slices": [
        {"sources": [{"model": b, "layer_range": [0, 3]}]},
        {"sources": [{"model": x, "layer_range": [1, 4], "parameters": {"scale": 0.5}}]}]},
}


@pytest.mark.parametrize("method", sorted(RECIPES))
def test_every_method_reloads_and_generates(fam, tmp_path, method):
    recipe = {"merge_method": method, **RECIPES[method](*fam)}
    code, out = merge(tmp_path, recipe)
    assert code == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    expected_layers = 6 if method == "passthrough" else 4
    assert model.config.num_hidden_layers == expected_layers
    ids = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert ids.shape == (1, 8)
    assert yaml.safe_load((out / "mergekit_config.yml").read_text())["merge_method"] == method
    merged, base = state(out), state(fam[0])
    if method != "passthrough":
        assert set(merged) == set(base)
        assert any(not torch.equal(merged[n], base[n]) for n in base)


def test_ties_full_model_matches_naive_with_gradient_and_filter(fam, tmp_path):
    b, x, y = fam
    recipe = {"merge_method": "ties", "base_model": b, "models": [
        {"model": x, "parameters": {"weight": 0.6, "density": [0.2, 0.8]}},
        {"model": y, "parameters": {"weight": [{"filter": "mlp", "value": 0.9}, {"value": 0.3}], "density": 0.5}}]}
    code, out = merge(tmp_path, recipe)
    assert code == 0
    merged, sb, sx, sy = state(out), state(b), state(x), state(y)
    for name in ["model.layers.0.mlp.up_proj.weight", "model.layers.2.self_attn.q_proj.weight",
                 "model.embed_tokens.weight", "model.norm.weight"]:
        idx = int(name.split(".")[2]) if ".layers." in name else 0
        t = idx / 3 if ".layers." in name else 0.0
        dx = 0.2 + 0.6 * t
        wy = 0.9 if "mlp" in name else 0.3
        ref = naive.ties(sb[name].double().numpy(), [sx[name].double().numpy(), sy[name].double().numpy()],
                         [0.6, wy], [dx, 0.5])
        np.testing.assert_allclose(merged[name].double().numpy(), ref, rtol=1e-5, atol=1e-6)


def test_dare_ties_full_model_matches_naive_masks_with_gradient_and_filter(fam, tmp_path):
    """The exported DARE masks are the counter-based ones of docs/design.md, recomputed independently in
    naive.py from (seed, tensor name, input position, entry index): the sources in recipe order, then
    the base."""
    b, x, y = fam
    recipe = {"merge_method": "dare_ties", "base_model": b, "models": [
        {"model": x, "parameters": {"weight": 0.6, "density": [0.2, 0.8]}},
        {"model": y, "parameters": {"weight": [{"filter": "mlp", "value": 0.9}, {"value": 0.3}], "density": 0.5}}]}
    code, out = merge(tmp_path, recipe, "--seed", "5")
    assert code == 0
    merged, sb, sx, sy = state(out), state(b), state(x), state(y)
    for name in ["model.layers.1.mlp.up_proj.weight", "model.layers.3.self_attn.o_proj.weight", "model.norm.weight"]:
        t = int(name.split(".")[2]) / 3 if ".layers." in name else 0.0
        base = sb[name].double().numpy()
        deltas = [naive.dare(sx[name].double().numpy() - base, 0.2 + 0.6 * t, 5, name, 0),
                  naive.dare(sy[name].double().numpy() - base, 0.5, 5, name, 1)]
        ref = naive.combine(base, deltas, [0.6, 0.9 if "mlp" in name else 0.3], consensus=True, normalize=False)
        np.testing.assert_allclose(merged[name].double().numpy(), ref, rtol=1e-5, atol=1e-6)


def test_passthrough_takes_the_right_layers(fam, tmp_path):
    b, x, _ = fam
    code, out = merge(tmp_path, {"merge_method": "passthrough", **RECIPES["passthrough"](*fam)})
    m, sb, sx = state(out), state(b), state(x)
    assert torch.equal(m["model.layers.2.mlp.down_proj.weight"], sb["model.layers.2.mlp.down_proj.weight"])
    assert torch.equal(m["model.layers.3.mlp.down_proj.weight"], sx["model.layers.1.mlp.down_proj.weight"] * 0.5)
    assert torch.equal(m["model.layers.5.self_attn.o_proj.weight"], sx["model.layers.3.self_attn.o_proj.weight"] * 0.5)
    assert torch.equal(m["model.embed_tokens.weight"], sb["model.embed_tokens.weight"])
    assert torch.equal(m["lm_head.weight"], sx["lm_head.weight"] * 0.5)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 6


def digest(folder):
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_random_methods_are_reproducible_from_the_seed(fam, tmp_path):
    recipe = {"merge_method": "dare_ties", **RECIPES["dare_ties"](*fam)}
    _, a = merge(tmp_path, recipe, "--seed", "7", name="a")
    _, b = merge(tmp_path, recipe, "--seed", "7", name="b")
    torch.manual_seed(999)
    _, c = merge(tmp_path, recipe, "--seed", "8", name="c")
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_dtypes_sharded_input_and_output(tmp_path):
    paths = family(tmp_path / "bf", "mistral", dtype=torch.bfloat16)
    sharded = tmp_path / "sharded"
    m = AutoModelForCausalLM.from_pretrained(paths[1])
    m.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists()
    recipe = {"merge_method": "ties", "base_model": paths[0], "dtype": "float32", "out_dtype": "bfloat16",
              "models": [{"model": str(sharded), "parameters": {"weight": 1.0, "density": 0.5}},
                         {"model": paths[2], "parameters": {"weight": 1.0, "density": 0.5}}]}
    code, out = merge(tmp_path, recipe, "--shard-size", "30KB")
    assert code == 0
    assert (out / "model.safetensors.index.json").exists()
    assert len(list(out.glob("model-*.safetensors"))) > 1
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in state(out).values())
    assert (out / "tokenizer_config.json").exists()        # copied from the base model
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.generate(torch.tensor([[4, 5]]), max_new_tokens=3, min_new_tokens=3, do_sample=False).shape == (1, 5)


# --------------------------------------------------------------------------- errors


def run_err(tmp_path, recipe, capsys, *extra):
    code, out = merge(tmp_path, recipe, *extra)
    err = capsys.readouterr().err
    assert code == 2, err
    assert not out.exists()
    assert not list(tmp_path.glob(".out.tmp-*"))
    return err


def test_error_mismatched_architectures(fam, tmp_path, capsys):
    other = tmp_path / "mistral"
    save_model(other, "mistral")
    err = run_err(tmp_path, {"merge_method": "ties", "base_model": fam[0],
                             "models": [{"model": str(other), "parameters": {"weight": 1}}]}, capsys)
    assert "different architectures (model_type 'llama' vs 'mistral')" in err


def test_error_vocab_size_mismatch_says_what_to_do(fam, tmp_path, capsys):
    other = tmp_path / "bigvocab"
    save_model(other, vocab_size=100)
    err = run_err(tmp_path, {"merge_method": "ties", "base_model": fam[0],
                             "models": [{"model": str(other), "parameters": {"weight": 1}}]}, capsys)
    assert f"models {fam[0]} and {other} differ in vocab_size (96 vs 100)" in err
    assert "resize_token_embeddings" in err


def _rewrite(src, dst, edit):
    sd = load_file(src / "model.safetensors")
    edit(sd)
    dst.mkdir()
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    (dst / "config.json").write_text((src / "config.json").read_text())


def test_error_missing_tensor(fam, tmp_path, capsys):
    from pathlib import Path
    broken = tmp_path / "broken"
    _rewrite(Path(fam[1]), broken, lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight"))
    err = run_err(tmp_path, {"merge_method": "ties", "base_model": fam[0],
                             "models": [{"model": str(broken), "parameters": {"weight": 1}}]}, capsys)
    assert f"tensor model.layers.1.mlp.up_proj.weight is missing from model {broken}" in err


def test_error_shape_mismatch(fam, tmp_path, capsys):
    from pathlib import Path
    broken = tmp_path / "broken"
    _rewrite(Path(fam[1]), broken, lambda sd: sd.update({"model.norm.weight": torch.ones(31)}))
    err = run_err(tmp_path, {"merge_method": "ties", "base_model": fam[0],
                             "models": [{"model": str(broken), "parameters": {"weight": 1}}]}, capsys)
    assert f"tensor model.norm.weight: shape (32,) in model {fam[0]} but (31,) in model {broken}" in err


def test_error_unknown_method_density_and_yaml(fam, tmp_path, capsys):
    err = run_err(tmp_path, {"merge_method": "frobnicate", "models": [{"model": fam[1]}]}, capsys)
    assert "merge_method: unknown merge_method 'frobnicate'" in err
    err = run_err(tmp_path, {"merge_method": "ties", "base_model": fam[0],
                             "models": [{"model": fam[1], "parameters": {"weight": 1, "density": 2}}]}, capsys)
    assert "models[0].parameters.density: density=2.0 is outside [0.0, 1.0]" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("merge_method: [ties\n")
    code = main(["merge", "--recipe", str(bad), "--out", str(tmp_path / "o")])
    assert code == 2 and f"{bad}: malformed YAML" in capsys.readouterr().err


def test_error_missing_weight_and_missing_model(fam, tmp_path, capsys):
    err = run_err(tmp_path, {"merge_method": "ties", "base_model": fam[0], "models": [{"model": fam[1]}]}, capsys)
    assert "missing required parameter 'weight' for model" in err and fam[1] in err
    err = run_err(tmp_path, {"merge_method": "linear", "models": [{"model": str(tmp_path / "nowhere")}]}, capsys)
    assert "nowhere: no such folder" in err


def test_existing_output_needs_force(fam, tmp_path, capsys):
    recipe = {"merge_method": "linear", "models": [{"model": fam[1], "parameters": {"weight": 1}}]}
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, _ = merge(tmp_path, recipe)
    assert code == 2 and "already exists; pass --force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"
    code, _ = merge(tmp_path, recipe, "--force")
    assert code == 0 and not (out / "keep.txt").exists() and (out / "model.safetensors").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_merge_matches_cpu(fam, tmp_path):
    recipe = {"merge_method": "ties", **RECIPES["ties"](*fam)}
    _, a = merge(tmp_path, recipe, "--device", "cpu", name="cpu")
    _, b = merge(tmp_path, recipe, "--device", "cuda", name="gpu")
    sa, sb = state(a), state(b)
    for n in sa:
        torch.testing.assert_close(sa[n], sb[n])


def test_error_nan_output_names_the_tensor(fam, tmp_path, capsys):
    from pathlib import Path
    broken = tmp_path / "broken"
    _rewrite(Path(fam[1]), broken,
             lambda sd: sd["model.layers.2.mlp.up_proj.weight"].view(-1).__setitem__(3, float("nan")))
    err = run_err(tmp_path, {"merge_method": "task_arithmetic", "base_model": fam[0],
                             "models": [{"model": str(broken), "parameters": {"weight": 1}}]}, capsys)
    assert "tensor model.layers.2.mlp.up_proj.weight: the merge produced NaN or inf" in err


def test_hub_reference_offline_is_a_clear_error(tmp_path, monkeypatch):
    from evollm.checkpoint import CheckpointError
    from evollm.hub import resolve_model
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="not a local folder, and fetching it from the Hugging Face hub failed"):
        resolve_model("no-such-org/no-such-model")


def test_tokenizer_source_and_plain_string_models(fam, tmp_path, capsys):
    import shutil
    from pathlib import Path
    (Path(fam[2]) / "tokenizer_config.json").write_text('{"from": "ft1"}')
    recipe = {"merge_method": "model_stock", "base_model": fam[0], "models": [fam[1], fam[2]],
              "tokenizer_source": fam[2]}
    code, out = merge(tmp_path, recipe)
    assert code == 0
    assert json.loads((out / "tokenizer_config.json").read_text()) == {"from": "ft1"}
    shutil.rmtree(out)
    err = run_err(tmp_path, dict(recipe, tokenizer_source=str(tmp_path / "missing-tok")), capsys)
    assert "missing-tok: no such folder" in err
