"""The world's recipe end to end at toy size: it builds, loads, generates, and rebuilds bit for bit."""

import hashlib
from pathlib import Path

import pytest
import torch

from evollm.tasks import mgsm
from miniworld import build, formats

TINY = {
    "tokenizer": {"vocab_size": 600, "docs": 800, "pairs_each": 100},
    "model": {"hidden": 32, "layers": 2, "heads": 2},
    "base": {"docs": 400, "steps": 3, "batch_size": 4, "block": 32},
    "ja": {"pairs": 40, "steps": 2, "batch_size": 4},
    "math-a": {"pairs": 40, "steps": 2, "batch_size": 4},
    "math-b": {"pairs": 40, "steps": 2, "batch_size": 4},
    "data": {"mgsm_fitness": 60, "mgsm_test": 30, "mixed_fitness": 20, "mixed_test": 20},
    "scene-base": {"docs": 200, "steps": 2, "batch_size": 4, "block": 32, "warmup": 1},
    "scene-ja": {"pairs": 40, "steps": 2, "batch_size": 4},
}
STAGES = ("tokenizer", "base", "finetune", "data", "scenes")


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("world")
    build.build(root / "a", stages=STAGES, recipe=TINY)
    return root


def test_world_rebuilds_bit_for_bit(world):
    build.build(world / "b", stages=STAGES, recipe=TINY)
    a, b = _digest(world / "a"), _digest(world / "b")
    assert a == b and any(k.endswith("model.safetensors") for k in a)


def test_only_rebuilds_the_named_scene_model(world):
    """`--only scene-ja` re-runs the Japanese model of the scenes stage alone, from the scene-base there."""
    import shutil
    root = world / "only"
    shutil.copytree(world / "a", root)
    shutil.rmtree(root / "models" / "scene-ja")
    (root / "models" / "scene-base" / "marker").write_text("kept")
    build.build(root, stages=("scenes",), only=["scene-ja"], recipe=TINY)
    assert (root / "models" / "scene-base" / "marker").exists()
    again, first = _digest(root / "models" / "scene-ja"), _digest(world / "a" / "models" / "scene-ja")
    assert again == first


def test_tokenizer_round_trips_japanese(world):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(world / "a" / "tokenizer")
    for s in ["鳥居は神社の入り口に立っています。", "アオイはカードを54個持っていました。", "未知：鬱😀"]:
        assert tok.decode(tok(s)["input_ids"], skip_special_tokens=True) == s


@pytest.mark.parametrize("name", ["base", "ja", "math-a", "math-b", "scene-base", "scene-ja"])
def test_each_model_loads_and_generates(world, name):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder = world / "a" / "models" / name
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    enc = tok([formats.alpaca_ja("ケンはりんごを3個持っています。")], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == enc["input_ids"].shape[1] + 4 and model.config.vocab_size == len(tok)


@pytest.mark.parametrize("target", ["mgsm-ja", "mixed"])
def test_data_loads_through_the_real_loader_and_splits_are_disjoint(world, target):
    fit = mgsm.load_mgsm(str(world / "a" / "data" / target / "fitness.jsonl"))
    test = mgsm.load_mgsm(str(world / "a" / "data" / target / "test.jsonl"))
    assert len(fit) == TINY["data"][f"{target.split('-')[0]}_fitness"] and len(test) > 0
    assert not set(fit["question"]) & set(test["question"])


def test_a_fine_tune_can_freeze_embeddings_norms_and_head(world):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from miniworld.train import train
    folder = world / "a" / "models" / "base"
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, tok, [("質問", "答えは3です。")] * 8, steps=2, batch_size=4, lr=1e-2, warmup=1,
          freeze=("embed_tokens", "lm_head", "norm"), weight_decay=0.0, log_every=0)
    after = model.state_dict()
    frozen = [k for k in after if any(f in k for f in ("embed_tokens", "lm_head", "norm"))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in after if k not in frozen)


def test_recipe_overrides_from_the_command_line():
    assert build.parse_overrides(["ja.lr=3e-4", "base.steps=10", "ja.freeze=[lm_head,norm]"]) == {
        "ja": {"lr": 3e-4, "freeze": ["lm_head", "norm"]}, "base": {"steps": 10}}
    with pytest.raises(SystemExit, match="SECTION.KEY=VALUE"):
        build.parse_overrides(["nosuch.lr=1"])
