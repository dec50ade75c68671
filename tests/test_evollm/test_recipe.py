"""Recipe parsing, validation, parameter resolution and YAML round trip."""

import pytest
import yaml

from evollm.recipe import RecipeError, evaluate_setting, load_recipe, parse_recipe

TIES = {
    "merge_method": "ties",
    "base_model": "B",
    "models": [{"model": "X", "parameters": {"density": 0.5, "weight": [0.2, 1.0]}},
               {"model": "Y", "parameters": {"density": 0.3,
                                             "weight": [{"filter": "mlp", "value": 0.7}, {"value": 0.3}]}}],
    "parameters": {"normalize": True, "lambda": 1.2},
    "dtype": "float32",
}


def test_round_trip_through_yaml(tmp_path):
    r = parse_recipe(TIES)
    p = tmp_path / "r.yaml"
    p.write_text(r.to_yaml())
    again = load_recipe(p)
    assert again.to_dict() == r.to_dict() == TIES
    assert again.model_refs() == ["B", "X", "Y"]


def test_gradients_and_filters():
    assert evaluate_setting([0.0, 1.0], "model.layers.0.x", 0.25) == 0.25
    assert evaluate_setting([0.0, 1.0, 0.0], "x", 0.75) == pytest.approx(0.5)
    assert evaluate_setting([0.0, 1.0, 0.0], "x", 1.0) == 0.0
    cond = [{"filter": "mlp", "value": [0.0, 1.0]}, {"value": 0.3}]
    assert evaluate_setting(cond, "model.layers.3.mlp.up_proj.weight", 0.5) == 0.5
    assert evaluate_setting(cond, "model.layers.3.self_attn.q_proj.weight", 0.5) == 0.3
    assert evaluate_setting([{"filter": "mlp", "value": 1}], "attn", 0) is None
    assert evaluate_setting("1e-2", "x", 0) == 0.01     # YAML reads 1e-2 as a string
    assert evaluate_setting([True, False], "x", 0.9) is True


@pytest.mark.parametrize("change,match", [
    ({"merge_method": "tiez"}, "merge_method: unknown merge_method 'tiez'"),
    ({"mystery": 1}, "mystery: unknown key"),
    ({"models": [{"model": "X", "parameters": {"density": 1.5, "weight": 1}}]},
     r"models\[0\].parameters.density: density=1.5 is outside \[0.0, 1.0\]"),
    ({"models": [{"model": "X", "parameters": {"density": [0.1, -0.2], "weight": 1}}]},
     r"density=-0.2 is outside"),
    ({"models": [{"model": "X", "parameters": {"densty": 0.5}}]},
     r"models\[0\].parameters.densty: unknown parameter for ties"),
    ({"models": [{"model": "X", "parameters": {"weight": "heavy"}}]}, "weight must be a number"),
    ({"models": [{"modle": "X"}]}, r"models\[0\].modle: unknown key"),
    ({"base_model": None}, "base_model: ties needs a base_model"),
    ({"dtype": "float8"}, "dtype: unknown dtype 'float8'"),
    ({"slices": []}, "give exactly one of 'models' or 'slices'"),
    ({"tokenizer_source": "union"}, "'union' vocabularies are not supported"),
    ({"parameters": {"normalize": "yes"}}, "normalize must be true or false"),
])
def test_bad_recipes_name_the_key(change, match):
    d = dict(TIES)
    d.update(change)
    d = {k: v for k, v in d.items() if v is not None}
    with pytest.raises(RecipeError, match=match):
        parse_recipe(d, origin="r.yaml")


def test_malformed_yaml_names_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("merge_method: ties\nmodels: [\n  - model: x\n")
    with pytest.raises(RecipeError, match=f"{p}: malformed YAML"):
        load_recipe(p)
    p.write_text("- just\n- a list\n")
    with pytest.raises(RecipeError, match="a recipe is a YAML mapping"):
        load_recipe(p)


def test_slices_validation():
    ok = {"merge_method": "passthrough",
          "slices": [{"sources": [{"model": "A", "layer_range": [0, 2]}]},
                     {"sources": [{"model": "B", "layer_range": [1, 3], "parameters": {"scale": 0.5}}]}]}
    r = parse_recipe(ok)
    assert [s.sources[0].layer_range for s in r.slices] == [(0, 2), (1, 3)]
    assert yaml.safe_load(r.to_yaml()) == ok
    bad = {"merge_method": "passthrough", "slices": [{"sources": [{"model": "A", "layer_range": [3, 1]}]}]}
    with pytest.raises(RecipeError, match=r"slices\[0\].sources\[0\].layer_range"):
        parse_recipe(bad)
    with pytest.raises(RecipeError, match="give 'slices', not 'models'"):
        parse_recipe({"merge_method": "passthrough", "models": [{"model": "A"}]})
    uneven = {"merge_method": "linear", "slices": [{"sources": [
        {"model": "A", "layer_range": [0, 2], "parameters": {"weight": 1}},
        {"model": "B", "layer_range": [0, 3], "parameters": {"weight": 1}}]}]}
    with pytest.raises(RecipeError, match="same number of layers"):
        parse_recipe(uneven)
