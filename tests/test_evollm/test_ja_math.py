"""The ja-math task's protocol pieces on fixed strings, and its loaders on local files of each format."""

import json

import pytest

from evollm.tasks import mgsm

PROMPT = ("以下に、あるタスクを説明する指示があります。リクエストを適切に完了するための回答を日本語で記述してください。"
          "一歩一歩考えましょう。\n\n### 指示:\nりんごが3個あります。\n\n### 応答:")


def test_prompt_is_the_official_japanese_alpaca_prompt():
    assert mgsm.prompts([{"question": "りんごが3個あります。"}]) == [PROMPT]


def test_language_rule_on_japanese_english_and_mixed_answers():
    assert mgsm.score("3 + 4 = 7なので、答えは7です。", 7)["in_lang"]
    assert not mgsm.score("First, 3 + 4 = 7. So the answer is 7.", 7)["in_lang"]
    # mostly English with a Japanese tail: lid.176 does not give ja more than half
    assert not mgsm.score("Ken has 3 apples and buys 4 more, so he has 7 apples. 答えは7", 7)["in_lang"]
    assert mgsm.score("ケンはりんごを3個持っていて、4個買いました。So 7.", 7)["in_lang"]


def test_loaders_read_every_local_format(tmp_path):
    raw = tmp_path / "mgsm_ja.tsv"             # MGSM's raw files: two columns, no header
    raw.write_text("りんごが3個あります。\t3\nみかんが1,200個\t1,200\n", encoding="utf-8")
    rows = list(mgsm.load_mgsm(str(raw)))
    assert [r["answer_number"] for r in rows] == [3, 1200] and rows[0]["question"] == "りんごが3個あります。"
    head = tmp_path / "h.tsv"
    head.write_text("question\tanswer_number\tlang\nq\t-4\tja\n", encoding="utf-8")
    assert list(mgsm.load_mgsm(str(head))) == [{"question": "q", "answer_number": -4, "lang": "ja"}]
    gsm = tmp_path / "gsm8k-ja.jsonl"          # GSM8K-style answers carry the number after ####
    gsm.write_text(json.dumps({"question": "q", "answer": "2 + 3 = 5\n#### 5"}, ensure_ascii=False) + "\n")
    assert list(mgsm.load_mgsm(str(gsm)))[0]["answer_number"] == 5
    import datasets
    datasets.Dataset.from_dict({"question": ["a", "b"], "answer_number": [1, 2]}).to_parquet(tmp_path / "p.parquet")
    assert [r["answer_number"] for r in mgsm.load_mgsm(str(tmp_path / "p.parquet"))] == [1, 2]


def test_loader_errors_name_the_file_and_the_fault(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl: no such data file"):
        mgsm.load_mgsm(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.tsv"
    bad.write_text("q\t3\textra\n")
    with pytest.raises(ValueError, match=r"bad.tsv.*line"):
        mgsm.load_mgsm(str(bad))
    nonum = tmp_path / "nonum.tsv"
    nonum.write_text("q\tthree\n")
    with pytest.raises(ValueError, match=r"nonum.tsv.*three"):
        mgsm.load_mgsm(str(nonum))
    gsm = tmp_path / "g.jsonl"
    gsm.write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(ValueError, match=r"g.jsonl.*####"):
        mgsm.load_mgsm(str(gsm))


def test_limit_takes_a_seeded_subset_in_data_order(tmp_path):
    p = tmp_path / "f.jsonl"
    p.write_text("\n".join(json.dumps({"question": f"q{i}", "answer_number": i}) for i in range(50)))
    a = mgsm.load_rows(str(p), limit=10, seed=1)
    assert a == mgsm.load_rows(str(p), limit=10, seed=1) != mgsm.load_rows(str(p), limit=10, seed=2)
    assert len(a) == 10 and [r["answer_number"] for r in a] == sorted(r["answer_number"] for r in a)
