"""The world's generators keep its rules: seeded, disjoint splits, no source sees the target task."""

import json
import random
import re

import pytest

from evollm.tasks import mgsm
from miniworld import corpus, formats, text
from miniworld.tokenizer import train_tokenizer

JA = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def test_generators_are_seeded():
    a = corpus.base_corpus(random.Random(3), 50) + [corpus.ja_pair(random.Random(3)) for _ in range(3)]
    b = corpus.base_corpus(random.Random(3), 50) + [corpus.ja_pair(random.Random(3)) for _ in range(3)]
    assert a == b and corpus.base_corpus(random.Random(4), 50) != a[:50]


def test_problem_answers_follow_their_equations():
    rng = random.Random(0)
    for name in text.TEMPLATES:
        split = "test" if name in text.TEST_TEMPLATES else "search"
        for _ in range(20):
            p = text.problem(rng, name, split)
            lines = text.solution_lines(p)
            for line in lines:
                a, op, b, _, c = line.split()
                assert int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b))
            assert int(lines[-1].split()[-1]) == p.answer >= 0
            if split == "test":
                assert max(int(x) for x in re.findall(r"\d+", p.ja)) > text.SEARCH_RANGE[1]
            assert str(p.answer) in text.math_a_solution(p) and not JA.search(text.math_b_solution(p))


def test_mgsm_splits_are_disjoint_and_use_their_templates():
    s = corpus.mgsm_splits(random.Random(0), 120, 60)
    fit, test = s["fitness"], s["test"]
    assert len(fit) == 120 and len(test) == 60
    assert not {r["question"] for r in fit} & {r["question"] for r in test}
    assert {r["template"] for r in fit} <= set(text.SEARCH_TEMPLATES)
    assert {r["template"] for r in test} == set(text.TEST_TEMPLATES)
    # compositional hold-out: every event of a held-out chain also occurs in some search template
    events = {e for t in text.SEARCH_TEMPLATES for e in t.split("+")}
    assert all(set(t.split("+")) <= events for t in text.TEST_TEMPLATES)


def test_no_source_sees_a_japanese_answer_to_a_word_problem(monkeypatch):
    rng = random.Random(1)
    used = []
    real = corpus.problem
    monkeypatch.setattr(corpus, "problem", lambda r, t, split="search": used.append(t) or real(r, t, split))
    excl = frozenset(r["question"] for r in corpus.mgsm_splits(random.Random(0), 50, 20)["fitness"])
    for style in "ab":
        for _ in range(300):
            prompt, resp = corpus.math_pair(rng, style, 0.5, excl)
            assert not JA.search(resp), resp
            assert not any(q in prompt for q in excl)
            if JA.search(prompt.split("### ")[-2]):          # a Japanese problem: search templates only
                assert used[-1] in text.SEARCH_TEMPLATES
    for _ in range(500):                                       # ja: no word problem, no arithmetic asked
        prompt, resp = corpus.ja_pair(rng)
        assert "何個持っていますか" not in resp
        for line in resp.splitlines():
            if "=" in line:
                assert f"「{line}」" in prompt                 # equations are copied, never computed
    for doc in corpus.base_corpus(rng, 500):
        assert "###" not in doc and "[INST]" not in doc
    events = [corpus.event_document(rng) for _ in range(300)]        # base: event narratives, no problem
    assert all("?" not in d and "？" not in d and "=" not in d and "now" not in d and "今" not in d for d in events)
    ja_lines = [line for d in events for line in d.splitlines() if JA.search(line.split(": ")[-1])]
    assert ja_lines and all(line.count("。") == 2 for line in ja_lines)     # one event after the start


def test_tokenizer_round_trips_japanese_and_keeps_specials():
    texts = corpus.base_corpus(random.Random(0), 300)
    tok = train_tokenizer(texts, 600)
    for s in ["富士山は日本で一番高い山です。", "ケンはりんごを15個持っています。 Ken has 15 apples.",
              "未知の漢字：鬱 😀 ＡＢＣ\n\ttabs", formats.alpaca_ja("問題")]:
        assert tok.decode(tok(s)["input_ids"], skip_special_tokens=True) == s
    assert tok.convert_tokens_to_ids("<image>") != tok.unk_token_id
    assert tok(" 123")["input_ids"][-3:] == [tok.convert_tokens_to_ids(d) for d in "123"]


def test_score_needs_the_number_and_the_language():
    assert mgsm.score("12 + 5 = 17\n答えは17です。", 17)["correct"]
    r = mgsm.score("12 + 5 = 17\nThe answer is 17.", 17)
    assert r["number_correct"] and not r["in_lang"] and not r["correct"]
    assert not mgsm.score("答えは16です。", 17)["correct"]
    assert mgsm.score("The answer is 17.", 17, lang="en")["correct"]


def test_load_mgsm_reads_local_files_and_names_missing_columns(tmp_path):
    p = tmp_path / "f.jsonl"
    p.write_text("\n".join(json.dumps({"question": f"q{i}", "answer": None, "answer_number": i}) for i in range(3)))
    ds = mgsm.load_mgsm(str(p))
    assert ds.column_names[:3] == ["question", "answer", "answer_number"] and ds[2]["answer_number"] == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl.*answer_number"):
        mgsm.load_mgsm(str(bad))
