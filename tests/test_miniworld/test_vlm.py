"""The world's VLM side: scenes, VQA data sets and loaders, the ROUGE-L metric, the vision-tower
conversion and a tiny LLaVA that trains, saves, loads and generates through stock transformers."""

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from miniworld import scenes as S
from miniworld import vlm as V
from miniworld.formats import SYSTEM_EN, SYSTEM_JA, chat
from miniworld.tokenizer import train_tokenizer
from miniworld.vqa_data import build_vqa_data, check_disjoint, signatures
from evovlm.data import load_in_the_wild, load_ja_vg_vqa, qa_items
from evovlm.infer import generate_answers
from evollm.protocols import ja_vqa
from miniworld.formats import WORLD_VQA


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is fastest, and avoids oversubscription on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- scenes

def test_scenes_are_deterministic_and_bucketed():
    a, b = S.scenes_for("fitness", 6, 3), S.scenes_for("fitness", 6, 3)
    assert a == b and [S.render(s).tobytes() for s in a] == [S.render(s).tobytes() for s in b]
    assert S.scenes_for("fitness", 6, 4) != a
    assert all(S.split_of(s.signature()) == "fitness" for s in a)
    assert len({s.signature() for s in a}) == 6
    # the bucket of a signature is fixed forever (sha256), so the splits regenerate bit for bit
    assert S.split_of("night|grass|0:lantern:red") == S.split_of("night|grass|0:lantern:red")
    assert [S.split_of(f"day|sand|{i}:koi:orange") for i in range(3)] == \
        [S.split_of(f"day|sand|{i}:koi:orange") for i in range(3)]
    img = S.render(a[0])
    assert img.size == (S.SIZE, S.SIZE) and img.mode == "RGB"


def test_scene_texts():
    sc = S.Scene("night", "grass", (S.Obj("torii gate", "red", 0), S.Obj("lantern", "white", 1),
                                    S.Obj("lantern", "white", 2)), 0)
    en, ja = S.qa_en(sc), S.qa_ja(sc)
    assert [t for t, _, _ in en] == [t for t, _, _ in ja]          # counterparts, one for one
    en_d, ja_d = {q: a for _, q, a in en}, {q: a for _, q, a in ja}
    assert en_d["How many lanterns are there?"] == "There are 2 lanterns."
    assert ja_d["提灯はいくつありますか？"] == "2つ"
    assert ja_d["鳥居はどこにありますか？"] == "左"
    assert ja_d["鳥居について教えてください。"] == "鳥居は神社の入り口に立っています。"
    assert en_d["What color is the torii gate?"] == "The torii gate is red."
    assert ja_d["何が写っていますか？"] == "赤い鳥居と白い提灯2つ"
    assert S.caption_en(sc, 0) == "A red torii gate and 2 white lanterns on the grass at night."
    single = S.Scene("day", "sand", (S.Obj("sushi", "orange", 1),), 0)
    assert dict((q, a) for _, q, a in S.qa_ja(single))["これは何ですか？"] == "オレンジの寿司"


def test_qa_examples_ask_japanese_under_either_system_prompt_and_answer_in_english():
    sc = S.Scene("evening", "grass", (S.Obj("lantern", "red", 1),), 0)
    ja_questions = {q for _, q, _ in S.qa_ja(sc)}
    en_answers = {" " + a for _, _, a in S.qa_en(sc, short=True)}
    for system, prompt_system in (("ja", SYSTEM_JA), ("en", SYSTEM_EN)):
        rng = random.Random(0)
        for _ in range(20):
            prompt, answer = V._qa_example(sc, rng, 1.0, short=True, ja_question_system=system)
            question = prompt.split("\n")[-1].removesuffix(" [/INST]")
            assert prompt == chat(question, system=prompt_system, image=True)
            assert question in ja_questions and answer in en_answers
    rng = random.Random(0)
    prompt, answer = V._qa_example(sc, rng, 0.0, short=True, ja_question_system="en")
    assert prompt.startswith(f"[INST] {SYSTEM_EN}")
    assert prompt.split("\n")[-1].removesuffix(" [/INST]") not in ja_questions


# --------------------------------------------------------------------------- data sets and loaders

@pytest.fixture(scope="module")
def world_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    build_vqa_data(out, seed=0, n_fitness=12, n_test=8, n_wild_images=5, n_wild_questions=7)
    return out


def test_vqa_data_sets_load_with_benchmark_columns(world_data):
    fit = load_ja_vg_vqa(str(world_data / "ja-vg-vqa-500"), split="fitness")
    test = load_ja_vg_vqa(str(world_data / "ja-vg-vqa-500"), split="test")
    wild = load_in_the_wild(str(world_data / "ja-vlm-bench-in-the-wild"))
    assert (len(fit), len(test), len(wild)) == (12, 8, 7)
    assert fit.column_names == ["image_id", "url", "width", "height", "coco_id", "flickr_id", "qas", "image"]
    assert set(fit[0]["qas"][0]) == {"a_objects", "answer", "q_objects", "qa_id", "question"}
    assert wild.column_names == ["page_url", "image_url", "image", "question", "answer"]
    assert len(set(wild["image_url"])) == 5
    assert load_ja_vg_vqa(str(world_data / "ja-vg-vqa-500" / "test.parquet"))["image_id"] == test["image_id"]
    items = qa_items(test)
    assert items[0]["question"] == test[0]["qas"][0]["question"] and items[0]["image"].size == (S.SIZE, S.SIZE)
    assert [x["answer"] for x in qa_items(wild)] == wild["answer"]


def test_splits_share_no_scene(world_data):
    fit = load_ja_vg_vqa(str(world_data / "ja-vg-vqa-500"), split="train")
    test = load_ja_vg_vqa(str(world_data / "ja-vg-vqa-500"), split="test")
    wild = load_in_the_wild(str(world_data / "ja-vlm-bench-in-the-wild"))
    sets = [signatures(fit), signatures(test), signatures(wild)]
    assert [len(x) for x in sets] == [12, 8, 5]
    check_disjoint(*sets)
    assert not set(fit["image_id"]) & set(test["image_id"])
    with pytest.raises(ValueError, match="share 1 scenes"):
        check_disjoint(sets[0], {next(iter(sets[0]))})


def test_loader_errors_name_the_file_and_column(world_data, tmp_path):
    with pytest.raises(ValueError, match=r"test\.parquet lacks column\(s\) \['question', 'answer'\]"):
        load_in_the_wild(str(world_data / "ja-vg-vqa-500"))
    with pytest.raises(FileNotFoundError, match="no train.parquet"):
        load_in_the_wild(str(tmp_path), split="train")


# --------------------------------------------------------------------------- metric

def test_rouge_l_ja():
    rouge_l = lambda p, r, seed=0: ja_vqa.score(p, r, seed)["rougeL_ja"]
    assert ja_vqa.Tokenizer().tokenize("赤い鳥居です。😀 ＡＢＣ") == ["赤い", "鳥居", "です", "。", "ABC"]
    refs = ["赤い鳥居です。", "提灯が2つあります。"]
    assert rouge_l(refs, refs) == pytest.approx(100.0)
    assert rouge_l(["This is a red torii gate.", "There are 2 lanterns."], refs) == 0.0
    partial = rouge_l(["赤い提灯です。", "提灯が3つあります。"], refs)
    assert 0 < partial < 100
    items = ja_vqa.item_scores(ja_vqa.language_rule(["赤い提灯です。", "There are 2 lanterns."], refs), refs)["rougeL"][:, 2]
    assert items[0] == pytest.approx(0.75) and items[1] == 0.0
    assert rouge_l(["赤い提灯です。"] * 3, ["赤い鳥居です。"] * 3, seed=1) == pytest.approx(75.0)
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        rouge_l(["a", "b"], ["c"])


# --------------------------------------------------------------------------- vision tower and tiny LLaVA

def test_openclip_to_hf_vision_gives_the_same_features():
    torch.manual_seed(0)
    clip = V.openclip_model(64, image_size=48, patch_size=16, width=32, layers=2, heads=2, embed_dim=16,
                            text_width=32, text_layers=1).eval()
    hf = V.openclip_to_hf_vision(clip.visual).eval()
    px = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        clip.visual.output_tokens = True
        pooled, tokens = clip.visual(px)
        out = hf(px)
        tower = getattr(hf, "vision_model", hf)
        assert torch.allclose(tower.post_layernorm(out.last_hidden_state)[:, 1:], tokens, atol=1e-5)
        assert torch.allclose(out.pooler_output @ clip.visual.proj, pooled, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """A tiny tokenizer + base LM saved like the world's `tokenizer/` and `models/base/`."""
    root = tmp_path_factory.mktemp("tiny")
    rng = random.Random(0)
    texts = [SYSTEM_EN, SYSTEM_JA, chat("x", image=True)]
    for s in S.scenes_for("train", 60, 0):
        texts += [S.caption_en(s, rng.randrange(4))] + [q + " " + a for _, q, a in S.qa_en(s) + S.qa_ja(s)]
    tok = train_tokenizer(texts, vocab_size=400)
    tok.save_pretrained(root / "tokenizer")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(root / "models" / "base")
    return root


def test_tiny_llava_generates_through_processor(tiny_world):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_world / "tokenizer")
    torch.manual_seed(0)
    clip = V.openclip_model(len(tok), width=32, layers=1, heads=2, embed_dim=16, text_width=32, text_layers=1)
    model = V.build_llava(V.openclip_to_hf_vision(clip.visual), tiny_world / "models" / "base", tok).eval()
    proc = V.make_processor(tok, S.SIZE, 16)
    imgs = [S.render(s) for s in S.scenes_for("test", 3, 0)]
    enc = proc(images=imgs[:2], text=[chat("鳥居はどこにありますか？", image=True), chat("What?", image=True)],
               padding=True, padding_side="left", return_tensors="pt")
    n_img = (S.SIZE // 16) ** 2 + 1
    assert (enc["input_ids"] == model.config.image_token_index).sum(1).tolist() == [n_img, n_img]
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape == (2, enc["input_ids"].shape[1] + 4)
    qs = ["What is this?", "鳥居はどこにありますか？とても長い質問です。", "x"]
    batched = generate_answers(model, proc, imgs, qs, WORLD_VQA, max_new_tokens=4, batch_size=3)
    assert batched == [generate_answers(model, proc, [i], [q], WORLD_VQA, max_new_tokens=4)[0] for i, q in zip(imgs, qs)]
    # the official protocol's beam search (5 beams) runs batched too, and agrees with one item at a time
    beams = generate_answers(model, proc, imgs, qs, ja_vqa.OFFICIAL, max_new_tokens=4, batch_size=3)
    assert beams == [generate_answers(model, proc, [i], [q], ja_vqa.OFFICIAL, max_new_tokens=4)[0]
                     for i, q in zip(imgs, qs)]


def test_vision_pretraining_with_contrastive_term(tiny_world):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_world / "tokenizer")
    proc = V.make_processor(tok, S.SIZE, 16)
    clip, head, rep = V.pretrain_vision(tok, proc, V.SceneStream(random.Random(0)), steps=2, batch=4,
                                        clip_weight=0.5, log=None, width=32, layers=1, heads=2, embed_dim=16,
                                        text_width=32, text_layers=1)
    assert rep["steps"] == 2 and rep["clip_weight"] == 0.5 and set(rep["attribute_accuracy"]) == \
        {"slot_kind", "slot_color", "time", "ground"}
    assert clip.transformer.resblocks[0].mlp.c_fc.weight.grad is not None      # the text tower trained


def test_shared_prefix_loss_equals_full_rows(tiny_world):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_world / "tokenizer")
    torch.manual_seed(0)
    clip = V.openclip_model(len(tok), width=32, layers=1, heads=2, embed_dim=16, text_width=32, text_layers=1)
    model = V.build_llava(V.openclip_to_hf_vision(clip.visual), tiny_world / "models" / "base", tok).train()
    proc = V.make_processor(tok, S.SIZE, 16)
    batcher, rng = V._Batcher(proc), random.Random(0)
    items = [(S.render(s), *(V._qa_example(s, rng, 0.5) if i % 3 else V._caption_example(s, rng, i % 2 == 0)))
             for i, s in enumerate(V.SceneStream(rng).take(8))]
    prompt = items[1][1]
    pre, rest = batcher.prompt_ids(prompt)
    assert pre + rest == proc(images=[items[1][0]], text=[prompt])["input_ids"][0]
    batches = batcher(items, micro=2)
    assert sum(len(b["input_ids"]) for b in batches) == 8
    grads = []
    for share in (True, False):
        model.zero_grad()
        loss = V.answer_loss(model, batches, share_prefix=share)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[0][1], grads[1][1]))


def test_train_vlm_saves_a_loadable_folder(tiny_world, world_data):
    out = tiny_world / "models" / "vlm-en"
    report = V.train_vlm(tiny_world / "tokenizer", tiny_world / "models" / "base", out, seed=0, vision_steps=2,
                         stage1_steps=1, stage2_steps=2, vision_batch=4, batch_size=4, width=32, layers=1, heads=2,
                         log=None)
    assert report["stage2"]["steps"] == 2 and (out / "model.safetensors").exists()
    assert not list(out.parent.glob(".vlm-en.tmp-*"))
    from evovlm.infer import load_vlm
    model, proc = load_vlm(out)
    assert type(proc).__name__ == "LlavaProcessor"
    ds = load_ja_vg_vqa(str(world_data / "ja-vg-vqa-500"), split="test")
    res = V.evaluate_vqa(model, proc, ds, max_new_tokens=3, batch_size=4)
    assert len(res["predictions"]) == len(ds) == len(res["items"]) and 0.0 <= res["rouge_l"] <= 100.0
    assert res["references"][0] == ds[0]["qas"][0]["answer"]
    again = V.evaluate_vqa(str(out), None, ds.select(range(2)), max_new_tokens=3)
    assert again["predictions"] == res["predictions"][:2]


def test_train_vlm_lm_params_trains_only_the_named_language_model_tensors(tiny_world, tmp_path):
    from safetensors.torch import load_file
    base = load_file(str(tiny_world / "models" / "base" / "model.safetensors"))
    kw = dict(seed=0, vision_steps=1, stage1_steps=0, stage2_steps=2, vision_batch=4, batch_size=4, width=32, layers=1,
              heads=2, lr_lm=1e-2, log=None)
    report = V.train_vlm(tiny_world / "tokenizer", tiny_world / "models" / "base", tmp_path / "v", lm_params=r"layers\.0\.mlp",
                         **kw)
    assert report["lm_params"] == r"layers\.0\.mlp" and all("layers.0.mlp" in n for n in report["lm_trained"])
    got = load_file(str(tmp_path / "v" / "model.safetensors"))
    lm = {k.removeprefix("language_model."): v for k, v in got.items() if k.startswith("language_model.")}
    assert set(lm) == set(base)
    changed = {k for k, v in lm.items() if not torch.equal(v, base[k].to(v.dtype))}
    assert changed and all(k.startswith("model.layers.0.mlp.") for k in changed)
    with pytest.raises(ValueError, match="vlm.lm_params='nosuch' matches no"):
        V.train_vlm(tiny_world / "tokenizer", tiny_world / "models" / "base", tmp_path / "w", lm_params="nosuch", **kw)


def test_train_vlm_reads_on_text_beside_the_images(tiny_world, tmp_path):
    """`text_batch`: stage 2 adds the language model's next-token loss on text-only documents."""
    kw = dict(seed=0, vision_steps=1, stage1_steps=0, stage2_steps=2, vision_batch=4, batch_size=4, width=32, layers=1,
              heads=2, log=None)
    docs = [f"{SYSTEM_JA}\n鳥居は赤です。" for _ in range(20)]
    with_text = V.train_vlm(tiny_world / "tokenizer", tiny_world / "models" / "base", tmp_path / "t", text_corpus=docs,
                            text_batch=2, text_block=16, **kw)
    plain = V.train_vlm(tiny_world / "tokenizer", tiny_world / "models" / "base", tmp_path / "p", **kw)
    assert with_text["text"] == {"batch": 2, "block": 16, "docs": 20} and plain["text"]["batch"] == 0
    assert with_text["stage2"]["final_loss"] > plain["stage2"]["final_loss"]     # the text loss is added
    with pytest.raises(ValueError, match="vlm.text_batch needs a text corpus"):
        V.train_vlm(tiny_world / "tokenizer", tiny_world / "models" / "base", tmp_path / "e", text_batch=2, **kw)
    with pytest.raises(ValueError, match="vlm.ja_question_system must be 'ja' or 'en', got 'fr'"):
        V.train_vlm(tiny_world / "tokenizer", tiny_world / "models" / "base", tmp_path / "f", ja_question_system="fr",
                    **kw)


def test_train_vlm_stage1_questions_and_a_projector_kept_through_stage2(tiny_world, tmp_path):
    """`stage1_qa_frac`: stage 1 (language model frozen) also answers English questions in the chat turn;
    `train_projector_stage2=False`: stage 2 leaves the projector as stage 1 made it."""
    from safetensors.torch import load_file
    kw = dict(seed=0, vision_steps=1, stage1_steps=2, vision_batch=4, batch_size=4, width=32, layers=1, heads=2,
              lr_lm=1e-2, log=None, stage1_qa_frac=1.0)
    tok, base = tiny_world / "tokenizer", tiny_world / "models" / "base"
    only1 = V.train_vlm(tok, base, tmp_path / "a", stage2_steps=0, **kw)
    kept = V.train_vlm(tok, base, tmp_path / "b", stage2_steps=2, train_projector_stage2=False, **kw)
    moved = V.train_vlm(tok, base, tmp_path / "c", stage2_steps=2, **kw)
    captions = V.train_vlm(tok, base, tmp_path / "d", stage2_steps=0, **{**kw, "stage1_qa_frac": 0.0})
    assert only1["stage1_qa_frac"] == 1.0 and kept["train_projector_stage2"] is False
    assert only1["stage1"]["final_loss"] != captions["stage1"]["final_loss"]     # other items in stage 1
    w = {k: load_file(str(tmp_path / k / "model.safetensors")) for k in "abc"}
    proj = [k for k in w["a"] if "multi_modal_projector" in k]
    lm = [k for k in w["a"] if k.startswith("language_model.")]
    assert proj and all(torch.equal(w["a"][k], w["b"][k]) for k in proj)
    assert not all(torch.equal(w["a"][k], w["c"][k]) for k in proj)
    assert not all(torch.equal(w["a"][k], w["b"][k]) for k in lm)                # stage 2 did train the LM
    with pytest.raises(ValueError, match=r"vlm.stage1_qa_frac must be in \[0, 1\], got 2"):
        V.train_vlm(tok, base, tmp_path / "e", stage2_steps=0, **{**kw, "stage1_qa_frac": 2})
    with pytest.raises(ValueError, match=r"vlm.stage1_mimic_time must be in \[0, 1\], got -0.1"):
        V.train_vlm(tok, base, tmp_path / "e", stage2_steps=0, stage1_mimic=2, stage1_mimic_time=-0.1, **kw)


def test_mimic_loss_trains_the_projector_towards_the_text_reading(tiny_world):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_world / "tokenizer")
    torch.manual_seed(0)
    clip = V.openclip_model(len(tok), width=32, layers=1, heads=2, embed_dim=16, text_width=32, text_layers=1)
    model = V.build_llava(V.openclip_to_hf_vision(clip.visual), tiny_world / "models" / "base", tok).train()
    batcher, rng = V._Batcher(V.make_processor(tok, S.SIZE, 16)), random.Random(0)
    rows = V.mimic_rows(V.SceneStream(rng), rng, 4, short=True)
    assert V._common_tail([5, 1, 2, 3], [9, 9, 2, 3]) == 2 and V._common_tail([1], [2]) == 0
    model.requires_grad_(False)
    proj = model.model.multi_modal_projector
    proj.requires_grad_(True)
    opt = torch.optim.Adam(proj.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = V.mimic_loss(model, batcher, rows)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert 0 < losses[-1] < 0.9 * losses[0]
    assert all(p.grad is None for p in model.model.language_model.parameters())


def test_mimic_rows_ask_the_time_as_often_as_asked():
    """`time_share`: that share of the rows ask the time of day (the answer the scene's); 0 draws nothing
    more (older builds' rows stay as they were); the facts are the scene's English facts."""
    from miniworld.scene_text import facts_en
    rows = lambda share, seed=0: V.mimic_rows(V.SceneStream(random.Random(seed)), random.Random(seed + 1), 200,
                                              image_size=32, short=True, time_share=share)
    asked = lambda rs: sum(q == "What time of day is it?" for _, q, _, _ in rs) / len(rs)
    assert asked(rows(1.0)) == 1.0
    assert 0.4 < asked(rows(0.5)) < 0.65 and asked(rows(0.0)) < 0.2
    scenes, rng = V.SceneStream(random.Random(0)).take(200), random.Random(1)
    by_hand = [(q, facts_en(sc, rng), a) for sc in scenes for _, q, a in [rng.choice(S.qa_en(sc, True))]]
    assert [r[1:] for r in rows(0.0)] == by_hand
    for sc, (_, _, facts, a) in zip(scenes, rows(1.0)):
        assert a == S.TIMES_EN[sc.time] and f"It is {a}." in facts
