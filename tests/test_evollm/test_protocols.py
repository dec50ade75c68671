"""The evaluation protocols (evollm.protocols) on hand-written strings.

Expected values of the official protocols are what the paper's public evaluation code returns on these
strings (MGSM-ja: `\\d*\\.?\\d+`, last match, `float`; lid.176 with newlines removed; the VQA tokenizer:
emoji 2.10.1, neologdn 0.5.2, fugashi + unidic-lite; rouge_score's bootstrap)."""

import math

import numpy as np
import pytest

from evollm import protocols
from evollm.langid import lang_prob
from evollm.protocols import ja_vqa, mgsm_ja
from evollm.protocols.mgsm_ja import IMPROVED, OFFICIAL, read_improved, read_official

from helpers import ASSETS

# --------------------------------------------------------------------------- MGSM-ja: reading


@pytest.mark.parametrize("text,expected", [
    ("7.50ドル", 7.5), ("答えは7.0です", 7.0), ("1,000", 0.0), ("合計は1,234円", 234.0), ("-12", 12.0),
    ("答えは１２です", 12.0), ("3²", 3.0), ("①", None), ("1.2.3", 0.3), ("答えは.5", 0.5), ("5.", 5.0),
    ("1e5", 5.0), ("", None), ("\u0663", 3.0), ("2024-05-01", 1.0), ("42\n", 42.0), ("答えは12。次は3.14", 3.14),
    ("00012", 12.0), ("9" * 400, math.inf), ("数字はありません", None)])
def test_official_reading(text, expected):
    got = read_official(text)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("text,expected", [
    ("7.50ドル", 7.5), ("答えは7.0です", 7.0), ("1,000", 1000), ("1,234,567円", 1234567), ("合計は1,234円です。", 1234),
    ("-12", -12), ("\u221212", -12), ("\uff0d\uff11\uff12", -12), ("答えは-5です", -5), ("気温は -3 度", -3),
    ("2024-05-01", 1), ("1-5", 5), ("3\u22125", 5), ("x-5", 5), ("10 - 3 = 7", 7), ("①", None), ("3²", 3),
    ("\uff13\uff0e\uff15", 3.5), ("答えは１２３です。", 123), ("答えは42.", 42), ("12 + 5 = 17\n答えは17です。", 17),
    ("1,000,000人", 1000000), ("数字はありません", None), ("", None), ("9" * 400, 10 ** 400 - 1),
    ("9" * 5000, math.inf), ("-" + "9" * 5000, -math.inf)])
def test_improved_reading(text, expected):
    got = read_improved(text)
    assert got == expected and type(got) is type(expected)


def test_right_is_exact_equality_with_answer_number():
    assert mgsm_ja.is_right(7.0, 7) and mgsm_ja.is_right(7, 7) and not mgsm_ja.is_right(None, 0)
    assert not mgsm_ja.is_right(math.inf, 10 ** 400) and not mgsm_ja.is_right(7.5, 7)
    assert mgsm_ja.is_right(read_improved("9" * 400), 10 ** 400 - 1)        # exact, not through float
    assert not mgsm_ja.is_right(1e17, 10 ** 17 + 1)


# --------------------------------------------------------------------------- MGSM-ja: language, stops, score

def test_language_id_removes_newlines_officially():
    assert lang_prob("答えは\n\n42") == pytest.approx(0.009669508785009384, abs=1e-9)
    assert lang_prob("答えは\n\n42") == lang_prob("答えは42")
    assert lang_prob("答えは\n\n42", newlines="space") > 0.99
    assert lang_prob("3 + 4 = 7なので、答えは7です。") == pytest.approx(0.9981129169464111, abs=1e-9)
    assert lang_prob("The answer is 7.") < 0.001
    with pytest.raises(ValueError, match="newlines"):
        lang_prob("x", newlines="keep")


def test_official_stop_strings_and_cut():
    assert OFFICIAL.stops == ("Instruction:", "Instruction", "Response:", "Response")
    second = "答えは5です。\n\n### 指示:\n次の問題: 12個"
    assert OFFICIAL.cut(second) == second and IMPROVED.cut(second) == "答えは5です。\n\n"
    assert OFFICIAL.score(second, 5)["answer"] == 12.0 and not OFFICIAL.score(second, 5)["number_correct"]
    assert IMPROVED.score(second, 5)["correct"]
    assert OFFICIAL.cut("答えは5です。### Response: 9") == "答えは5です。### "
    assert OFFICIAL.score("答えは5です。### Response: 9", 5)["correct"]


def test_score_combines_the_number_and_the_language():
    r = OFFICIAL.score("12 + 5 = 17\n答えは17です。", 17)
    assert r == {"answer": 17.0, "number_correct": True, "in_lang": True, "correct": True}
    r = OFFICIAL.score("12 + 5 = 17\nThe answer is 17.", 17)
    assert r["number_correct"] and not r["in_lang"] and not r["correct"]
    assert not OFFICIAL.score("答えは\n\n42", 42)["correct"] and IMPROVED.score("答えは\n\n42", 42)["correct"]
    assert OFFICIAL.score("-5", 5)["number_correct"] and not IMPROVED.score("-5", 5)["number_correct"]
    assert OFFICIAL.score("The answer is 17.", 17, lang="en")["correct"]


def test_protocol_registry():
    assert protocols.get("ja-math") is IMPROVED and protocols.get("ja-math", "official") is OFFICIAL
    assert protocols.get("ja-vqa") is ja_vqa.OFFICIAL and protocols.get("ja-vqa", "world").name == "world"
    assert OFFICIAL.generation == {"num_beams": 1, "repetition_penalty": 1.0, "max_new_tokens": 1024}
    with pytest.raises(ValueError, match="unknown protocol 'x' for ja-math; known: official, improved"):
        protocols.get("ja-math", "x")


# --------------------------------------------------------------------------- Japanese VQA

@pytest.mark.parametrize("text,tokens", [
    ("すごーーーい", ["すごーい"]), ("すごーい", ["すごーい"]), ("10〜20個", ["1020", "個"]),
    ("赤い鳥居です😀✨", ["赤い", "鳥居", "です"]), ("ｶﾀｶﾅとＡＢＣ\u3000全角", ["カタカナ", "と", "ABC", "全角"]),
    ("  たくさん   の\n\n空白  ", ["たくさん", "の", "空白"]), ("「ハロー」！？", ["「", "ハロー", "」", "!", "?"]),
    ("ｳﾞｧｲｵﾘﾝ", ["ヴァイオリン"]), ("1,000円", ["1", ",", "000", "円"]), ("ーーー", ["ー"]), ("〜", []),
    ("Ⓒ©®‼️™ #1️⃣ ✂ ✈ 🇯🇵", ["Ⓒ", "\ufe0f", "#", "1", "\ufe0f", "\u20e3"])])
def test_official_tokenizer(text, tokens):
    assert ja_vqa.Tokenizer().tokenize(text) == tokens


def test_tokenizer_libraries_are_the_official_versions():
    import emoji
    import neologdn
    assert (emoji.__version__, neologdn.__version__) == ("2.10.1", "0.5.2")


REFS = ["赤い鳥居があります。", "提灯が2つあります。", "すごーい", "There are 3 cats.", "富士山です", "10〜20個"]
PREDS = ["赤い鳥居です。", "There are 2 lanterns.", "すごーーーい😀", "There are 3 cats.", "", "1020個"]


def test_official_numbers_with_the_official_seed():
    """`evaluate.py` seeds 42, then scores without and with the language rule from that one stream."""
    assert ja_vqa.score(PREDS, REFS, 42) == {
        "rouge1": 62.77777777777778, "rouge2": 37.5, "rougeL": 62.77777777777778,
        "rouge1_ja": 60.0, "rouge2_ja": 37.5, "rougeL_ja": 60.0}


def test_bootstrap_is_rouge_scores_aggregator_drawn_from_an_explicit_rng():
    from rouge_score import rouge_scorer, scoring
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=ja_vqa.Tokenizer())
    agg = scoring.BootstrapAggregator()
    for r, p in zip(REFS * 5, PREDS[::-1] * 5):
        agg.add_scores(scorer.score(r, p))
    state = np.random.get_state()
    np.random.seed(7)
    want = {t: v.mid.fmeasure * 100 for t, v in agg.aggregate().items()}
    np.random.set_state(state)
    before = np.random.get_state()[1].copy()
    assert ja_vqa.aggregate(PREDS[::-1] * 5, REFS * 5, np.random.RandomState(7)) == want
    assert (np.random.get_state()[1] == before).all()           # the global RNG is left alone


def test_language_rule_blanks_non_japanese_answers_to_japanese_references():
    refs = ["提灯が2つあります。", "There are 3 cats.", "赤い鳥居があります。"]
    assert ja_vqa.language_rule(["There are 2.", "There are 3 cats.", "赤い鳥居です。"], refs) \
        == ["", "There are 3 cats.", "赤い鳥居です。"]
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        ja_vqa.score(["a", "b"], ["c"])


def test_official_vqa_prompt_and_generation():
    assert ja_vqa.OFFICIAL.prompt("鳥居は何色？") == (
        "[INST] <<SYS>>\nあなたは役立つ、偏見がなく、検閲されていないアシスタントです。与えられた画像を下に、質問に答えてください。"
        "\n<</SYS>>\n\n<image>\n鳥居は何色？ [/INST]")
    assert ja_vqa.OFFICIAL.generation == {"num_beams": 5, "repetition_penalty": 1.5, "max_new_tokens": 512}
    assert (ja_vqa.OFFICIAL.dtype, ja_vqa.OFFICIAL.batch_size) == ("float16", 4)


# --------------------------------------------------------------------------- where the protocols are used


def test_run_config_picks_a_protocol_and_fills_its_generation_settings(tmp_path):
    from evollm.search import config as C
    base = C.load_config(ASSETS.parent / "configs" / "world-ja-math.yaml")
    cfg = C.parse_config({**_raw(), "task": {**_raw()["task"], "protocol": "official", "max_new_tokens": None}},
                         "r.yaml", ASSETS.parent / "configs")
    assert cfg.task.protocol == "official" and cfg.task.max_new_tokens == 1024
    assert (cfg.task.repetition_penalty, cfg.task.num_beams) == (1.0, 1)
    assert base.task.protocol == "improved" and base.task.max_new_tokens == 48
    with pytest.raises(C.ConfigError, match=r"`task.protocol` must be one of \['official', 'improved'\]"):
        C.parse_config({**_raw(), "task": {**_raw()["task"], "protocol": "world"}}, "r.yaml", ASSETS.parent / "configs")
    # before protocols: `official_extraction` (older run folders' config.yaml) reads as the protocol
    old = {**_raw(), "task": {**_raw()["task"], "official_extraction": True}}
    old["task"].pop("protocol")
    assert C.parse_config(old, "r.yaml", ASSETS.parent / "configs").task.protocol == "official"
    old["task"]["protocol"] = "improved"
    with pytest.raises(C.ConfigError, match="contradicts"):
        C.parse_config(old, "r.yaml", ASSETS.parent / "configs")


def _raw():
    import yaml
    return yaml.safe_load((ASSETS.parent / "configs" / "world-ja-math.yaml").read_text())


def test_eval_scores_one_generation_under_both_protocols(tmp_path, capsys):
    from evollm.cli import main
    out = tmp_path / "e.json"
    assert main(["eval", "--model", str(ASSETS / "models" / "math-a"), "--limit", "6", "--max-new-tokens", "48",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| official |" in printed and "| improved |" in printed and "scored differently" in printed
    r = __import__("json").loads(out.read_text())
    assert r["protocol"] == "official" and set(r["protocols"]) == {"official", "improved"}
    assert r["accuracy"] == r["protocols"]["official"]["accuracy"]
    item = r["outputs"][0]
    assert item["official"]["output"] == OFFICIAL.cut(item["generated"])
    assert item["improved"]["answer"] == read_improved(IMPROVED.cut(item["generated"]))


def test_bench_reports_every_official_number_reproducibly(tmp_path):
    from evovlm.bench import run_bench
    vlm = str(ASSETS / "models" / "vlm-en")
    a = run_bench([vlm], ["world-vqa"], limit=3, protocol="official", log=lambda *x: None)[vlm]["world-vqa"]
    assert a["protocol"] == "official" and a["dtype"] == "float16" and a["items"] == 3
    assert {"rouge1", "rouge2", "rougeL", "rouge1_ja", "rouge2_ja", "rougeL_ja"} <= set(a)
    preds = [p["prediction"] for p in a["predictions"]]
    refs = [p["answer"] for p in a["predictions"]]
    assert {k: a[k] for k in ja_vqa.ROUGE_TYPES} == {k: v for k, v in ja_vqa.score(preds, refs, 42).items()
                                                     if k in ja_vqa.ROUGE_TYPES}
    w = run_bench([vlm], ["world-vqa"], limit=3, log=lambda *x: None)[vlm]["world-vqa"]
    assert (w["protocol"], w["dtype"]) == ("world", "float32")
