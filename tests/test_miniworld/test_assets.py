"""The committed miniature world (assets/): it loads, generates, and its data sets obey the rules."""

import json

import pytest
import torch

from evollm.langid import lang_prob
from evollm.protocols.mgsm_ja import IMPROVED, read_improved
from evollm.tasks import mgsm
from miniworld import build, formats

from helpers import ASSETS

LMS = ("base", "ja", "math-a", "math-b")


def _lm(name):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder = ASSETS / "models" / name
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    return tok, AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def test_assets_stay_small():
    size = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    assert size < 42 * 2**20, f"assets/ holds {size / 2**20:.1f} MiB"


def test_tokenizer_round_trips_any_text():
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(ASSETS / "tokenizer")
    for s in ["富士山は日本で一番高い山です。", "ハナはりんごを34個持っています。 Hana has 34 apples.",
              "未知の漢字：鬱、絵文字😀、全角１２３", "### 指示:\n\t  spaces"]:
        assert tok.decode(tok(s)["input_ids"], skip_special_tokens=True) == s


@pytest.mark.parametrize("name", LMS)
def test_models_were_built_by_the_current_recipe(name):
    meta = json.loads((ASSETS / "models" / name / "world_recipe.json").read_text())
    want = build.RECIPE["base" if name == "base" else name]
    assert {k: meta[k] for k in want} == want


def test_sources_do_what_they_were_trained_for():
    from evollm.generate import generate
    rows = list(mgsm.load_mgsm(str(ASSETS / "data" / "mgsm-ja" / "test.jsonl")))[:8]
    tok, math_a = _lm("math-a")
    out = generate(math_a, tok, mgsm.prompts(rows), max_new_tokens=48, batch_size=8, stops=IMPROVED.stops)
    # math-a reads Japanese problems and answers in English (weak on the target by construction)
    assert sum(read_improved(o) == r["answer_number"] for o, r in zip(out, rows)) >= 6
    assert all(lang_prob(o, "ja") < 0.5 for o in out)
    tok, ja = _lm("ja")
    out = generate(ja, tok, [formats.alpaca_ja("「12 + 5 = 17」という計算があります。最後の答えを書いてください。")],
                   max_new_tokens=24, batch_size=1, stops=IMPROVED.stops)
    assert "答えは17です" in out[0]
    for name in ("base", "math-b"):
        tok, model = _lm(name)
        assert generate(model, tok, mgsm.prompts(rows[:2]), max_new_tokens=8, batch_size=2)[0].strip()


def test_vlm_loads_and_answers_about_an_image():
    from evovlm.data import load_ja_vg_vqa, qa_items
    from evovlm.infer import generate_answers
    from miniworld.formats import WORLD_VQA
    from evovlm.infer import load_vlm
    model, proc = load_vlm(ASSETS / "models" / "vlm-en")
    items = qa_items(load_ja_vg_vqa(str(ASSETS / "data" / "ja-vg-vqa-500" / "test.parquet")))[:2]
    out = generate_answers(model, proc, [i["image"] for i in items], [i["question"] for i in items], WORLD_VQA,
                           max_new_tokens=12)
    assert len(out) == 2 and all(o.strip() for o in out)


@pytest.mark.parametrize("target", ["mgsm-ja", "mixed"])
def test_text_splits_load_through_the_real_loader_and_share_no_item(target):
    fit = mgsm.load_mgsm(str(ASSETS / "data" / target / "fitness.jsonl"))
    test = mgsm.load_mgsm(str(ASSETS / "data" / target / "test.jsonl"))
    sizes = build.RECIPE["data"]
    key = target.split("-")[0]
    assert (len(fit), len(test)) == (sizes[f"{key}_fitness"], sizes[f"{key}_test"])
    assert not set(fit["question"]) & set(test["question"])
    if target == "mgsm-ja":
        assert not set(fit["template"]) & set(test["template"])        # held-out templates


@pytest.mark.slow
def test_no_evaluation_question_is_in_training_data():
    seed, rc = build.RECIPE["seed"], build.RECIPE
    rows = [r for t in ("mgsm-ja", "mixed") for s in ("fitness", "test")
            for r in mgsm.load_mgsm(str(ASSETS / "data" / t / f"{s}.jsonl"))]
    questions = {r["question"] for r in rows}
    ja = {p for p, _ in build.ja_pairs(seed, rc["ja"])}
    assert not any(formats.alpaca_ja(q) in ja or formats.chat(q, formats.SYSTEM_JA) in ja for q in questions)
    excl = build.mgsm_exclusions(seed, rc["data"])
    for name in ("math-a", "math-b"):
        prompts = {p for p, _ in build.math_pairs(seed, name, rc[name], excl)}
        leaked = [q for q in questions if formats.alpaca_ja(q) in prompts or formats.alpaca_en(q) in prompts]
        assert not leaked, f"{name} trained on {len(leaked)} evaluation questions, e.g. {leaked[:1]}"


def test_vqa_splits_load_through_the_real_loaders_and_share_no_scene():
    from evovlm.data import load_in_the_wild, load_ja_vg_vqa
    from miniworld.vqa_data import check_disjoint, signatures
    d = ASSETS / "data"
    fit = load_ja_vg_vqa(str(d / "ja-vg-vqa-500" / "train.parquet"))
    test = load_ja_vg_vqa(str(d / "ja-vg-vqa-500" / "test.parquet"))
    wild = load_in_the_wild(str(d / "ja-vlm-bench-in-the-wild" / "test.parquet"))
    assert len(fit) >= 100 and len(test) >= 100 and len(wild) == 50
    check_disjoint(signatures(fit), signatures(test), signatures(wild))


def test_recorded_recipe_exports_what_the_report_evaluates(tmp_path):
    """`evollm merge` on assets/recipes/ writes exactly the in-memory candidate the tables score."""
    from safetensors.torch import load_file
    from evollm.cli import main
    from evollm.engine.memory import InMemoryMerger
    from miniworld.report import SOURCES, load_world, recorded_recipes
    assert main(["merge", "--recipe", str(ASSETS / "recipes" / "mgsm-ja-searched.yaml"), "--out",
                 str(tmp_path / "m"), "--seed", "0", "--quiet"]) == 0
    exported = load_file(str(tmp_path / "m" / "model.safetensors"))
    tok, sd, model = load_world(ASSETS)
    (method, g, per), = recorded_recipes(ASSETS, "mgsm-ja").values()
    merged = InMemoryMerger(model, sd["base"], {n: sd[n] for n in SOURCES}).merge(method, g, per, seed=0)
    assert all(torch.equal(v, exported[k]) for k, v in merged.state_dict().items())


@pytest.mark.slow
def test_the_recorded_merge_composes_what_no_source_has():
    """The world's point (issue 3): the recorded recipe answers held-out Japanese problems in Japanese
    with the right number, where every source fails (measured here on the first 40 test items)."""
    from evollm.engine.memory import InMemoryMerger
    from miniworld.report import SOURCES, load_world, recorded_recipes
    tok, sd, model = load_world(ASSETS)
    rows = list(mgsm.load_mgsm(str(ASSETS / "data" / "mgsm-ja" / "test.jsonl")))[:40]
    acc = lambda m: mgsm.evaluate(m, tok, rows, max_new_tokens=48, batch_size=40)["accuracy"]
    for name in ("base", *SOURCES):
        model.load_state_dict(sd[name])
        assert acc(model) <= 5, name
    (method, g, per), = recorded_recipes(ASSETS, "mgsm-ja").values()
    merged = InMemoryMerger(model, sd["base"], {n: sd[n] for n in SOURCES}).merge(method, g, per, seed=0)
    assert acc(merged) >= 20
