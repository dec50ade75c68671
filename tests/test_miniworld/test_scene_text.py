"""The VLM experiment's scene texts: they state what the short answers say, and only about training scenes."""

import random

from miniworld import formats
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
    assert not any(p.endswith("詳しく説明してください。 [/INST]") for p, _ in pairs)


def test_scene_ja_describe_share_asks_for_the_whole_scene_in_japanese():
    import re
    rng = random.Random(2)
    pairs = [T.scene_ja_pair(rng, describe_share=0.5) for _ in range(60)]
    whole = [(p, a) for p, a in pairs if p.endswith("詳しく説明してください。 [/INST]")]
    assert 15 < len(whole) < 45
    assert all("景色です。" in a and not re.search("[A-Za-z]", a) and "<image>" not in p for p, a in whole)


def test_scene_documents_are_deterministic():
    a = [T.scene_document(random.Random(3)) for _ in range(3)]
    assert a[0] == a[1] == a[2] and a[0]


def test_scene_look_ups_are_chat_turns_answered_in_the_question_language():
    import re
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
    rng_eos = random.Random(4)
    eos = [T.scene_document(rng_eos, paired=1.0, paired_eos=True) for _ in range(200)]
    assert [d.replace(formats.TURN_END, "\n") for d in eos] == docs     # the same documents, turns ended
    assert sum(formats.TURN_END in d for d in eos) == sum(d.count("[INST]") == 2 for d in docs) > 50
    pairs = [d for d in docs if d.count("[INST]") == 2]
    assert len(pairs) > 50 and all(d.count("[INST]") in (0, 2) for d in docs)
    for d in pairs:
        first, second = d.split("\n[INST] ")
        body = lambda turn: turn.split("\n", 1)[1].rsplit("\n", 1)[0]     # the description between system and question
        assert body(first) == body("[INST] " + second)
        assert ("[INST] " + second).startswith("[INST] You") != first.startswith("[INST] You")


def test_question_type_is_read_back_from_every_japanese_question():
    rng = random.Random(1)
    for _ in range(200):
        for t, q, _ in S.qa_ja(S.random_scene(rng)):
            assert S.question_type_ja(q) == t, q


def test_look_up_share_and_balanced_question_types():
    """`lookups`: the share of scene documents that are look-ups; `balanced`: every question type as often
    (a scene has one time question but a colour, count and place question per group)."""
    import collections
    docs = lambda **kw: [T.scene_document(random.Random(i), **kw) for i in range(600)]
    share = lambda ds: sum(d.startswith("[INST]") for d in ds) / len(ds)
    assert abs(share(docs()) - 0.45) < 0.06 and abs(share(docs(lookups=0.8)) - 0.8) < 0.06

    def types(balanced):
        rng = random.Random(5)
        out = collections.Counter()
        for _ in range(1400):
            _, (_, q, _) = T._qa(T.train_scene(rng), rng, balanced=balanced)
            out[S.question_type_ja(q)] += 1
        return out
    plain, even = types(False), types(True)
    assert set(plain) == set(even) and len(even) >= 6
    common = [v for t, v in even.items() if t != "where"]            # "where" needs a single thing of a kind
    assert max(common) < 1.2 * min(common)
    assert even["time"] > 1.3 * plain["time"]
    pairs = [T.scene_ja_pair(random.Random(i), balanced=True)[0] for i in range(400)]
    assert 0.1 < sum(p.endswith("いつの景色ですか？ [/INST]") for p in pairs) / 400 < 0.25


def test_time_share_asks_the_time_of_day_and_keeps_the_default_documents():
    """`time_share`: that share of look-ups ask the time (in either language); 0 draws the same documents."""
    docs = lambda **kw: [T.scene_document(random.Random(i), **kw) for i in range(600)]
    assert docs() == docs(time_share=0.0)
    asks = lambda ds: [d for d in ds if d.startswith("[INST]")]
    is_time = lambda d: "いつの景色ですか？ [/INST]" in d or "What time of day is it? [/INST]" in d
    plain, more = asks(docs()), asks(docs(time_share=0.5))
    assert sum(map(is_time, plain)) / len(plain) < 0.2
    assert 0.5 < sum(map(is_time, more)) / len(more) < 0.7          # half, plus the rest's own time questions
