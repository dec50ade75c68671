"""The VLM experiment's scene texts: they state what the short answers say, and only about training scenes."""

import random

from miniworld import scene_text as T
from miniworld import scenes as S


def test_scene_texts_hold_the_answer_words_and_only_train_scenes():
    rng = random.Random(0)
    for _ in range(50):
        scene = T.train_scene(rng)
        assert S.split_of(scene.signature()) == "train"
        ja = T.facts_ja(scene, rng)
        for t, q, a in S.qa_ja(scene):
            if t in ("color", "where", "time"):
                assert a in ja, (q, a, ja)
            if t == "count":
                assert a in ja
        en = T.facts_en(scene, rng)
        assert all(c in en for _, c, _, _ in scene.groups())


def test_scene_ja_pairs_ask_japanese_questions_answered_in_japanese_about_text():
    import re
    rng = random.Random(1)
    pairs = [T.scene_ja_pair(rng) for _ in range(40)]
    assert all("<image>" not in p for p, _ in pairs)
    assert all(re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", a) and not re.search("[A-Za-z]", a) for _, a in pairs)
    assert {"左", "真ん中", "右"} & {a for _, a in pairs}


def test_scene_documents_are_deterministic():
    a = [T.scene_document(random.Random(3)) for _ in range(3)]
    assert a[0] == a[1] == a[2] and a[0]


def test_scene_look_ups_are_chat_turns_answered_in_the_question_language():
    import re
    from miniworld import formats
    rng = random.Random(2)
    looks = [d for d in (T.scene_document(rng) for _ in range(300)) if d.startswith("[INST]")]
    assert len(looks) > 50
    langs = set()
    for d in looks:
        prompt, answer = d.split(" [/INST] ")
        ja = prompt.startswith(f"[INST] {formats.SYSTEM_JA}\n")
        assert ja or prompt.startswith(f"[INST] {formats.SYSTEM_EN}\n")
        assert bool(re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", answer)) == ja, d
        langs.add(ja)
    assert langs == {True, False}


def test_paired_look_ups_ask_one_description_in_both_languages():
    rng = random.Random(4)
    docs = [T.scene_document(rng, paired=1.0) for _ in range(200)]
    pairs = [d for d in docs if d.count("[INST]") == 2]
    assert len(pairs) > 50 and all(d.count("[INST]") in (0, 2) for d in docs)
    for d in pairs:
        first, second = d.split("\n[INST] ")
        body = lambda turn: turn.split("\n", 1)[1].rsplit("\n", 1)[0]     # the description between system and question
        assert body(first) == body("[INST] " + second)
        assert ("[INST] " + second).startswith("[INST] You") != first.startswith("[INST] You")
