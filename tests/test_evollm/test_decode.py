"""The continuous-batching greedy decoder (evollm.decode) gives HF `generate`'s outputs: the world's
models and tiny random Llama/Mistral models, prompts of different lengths with and without a shared
prefix, early EOS, stop strings across tokens and across the prompt's end, fewer slots than prompts
(refill), DFS models; its stop-string rule is HF's StopStringCriteria's; other requests fall back."""

import itertools
import json
import random

import pytest
import torch
from helpers import ASSETS, save_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
from transformers.generation.stopping_criteria import StopStringCriteria

from evollm import decode
from evollm.dfs import Hop, build_dfs_model
from evollm.generate import generate, generate_static, truncate_at
from evollm.protocols.mgsm_ja import PROMPT_EN, STOPS
from evollm.tasks import mgsm

IMPROVED_STOPS = list(STOPS) + ["### 指示"]


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(ASSETS / "models" / "ja")


@pytest.fixture(scope="module")
def world():
    return {name: AutoModelForCausalLM.from_pretrained(ASSETS / "models" / name, dtype=torch.float32).eval()
            for name in ("base", "ja", "math-a")}


def fitness_rows(n, start=0):
    with open(ASSETS / "data" / "mgsm-ja" / "fitness.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in itertools.islice(f, start, start + n)]


def hf_ids(model, tok, prompts, max_new_tokens, stops=(), batch_size=8):
    """HF generate's new tokens per prompt, as today's static path produces them (padding kept)."""
    out = []
    for i in range(0, len(prompts), batch_size):
        enc = tok(prompts[i:i + batch_size], return_tensors="pt", padding=True, padding_side="left")
        kw = dict(stop_strings=list(stops), tokenizer=tok) if stops else {}
        with torch.no_grad():
            seq = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **kw)
        out += seq[:, enc["input_ids"].shape[1]:].tolist()
    return out


def assert_same(model, tok, prompts, max_new_tokens, stops=(), batch_size=8, hf_batch=8, **kw):
    """Token for token: each new-path row is a prefix of HF's row and HF has only padding after it;
    and the texts `generate` returns are equal. Returns the new path's token lists."""
    ids = decode.greedy(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        stops=stops, **kw)
    ref = hf_ids(model, tok, prompts, max_new_tokens, stops, hf_batch)
    for i, (a, b) in enumerate(zip(ids, ref)):
        assert a == b[:len(a)] and set(b[len(a):]) <= {tok.pad_token_id}, (i, a, b)
    texts = [truncate_at(t, stops) for t in tok.batch_decode(ids, skip_special_tokens=True)]
    assert texts == generate_static(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=hf_batch,
                                    stops=stops)
    return ids


# ---------------------------------------------------------------------------------------- the world

@pytest.mark.parametrize("name", ["ja", pytest.param("base", marks=pytest.mark.slow),
                                  pytest.param("math-a", marks=pytest.mark.slow)])
def test_world_models_on_the_fitness_prompts(world, tok, name):
    """The ja-math prompt (a long shared prefix), 48 new tokens, the improved stop strings, 5 slots for
    24 prompts: sorted, refilled, rows ending by EOS and by stop strings."""
    prompts = mgsm.prompts(fitness_rows(24))
    ids = assert_same(world[name], tok, prompts, 48, IMPROVED_STOPS, batch_size=5)
    assert len({len(x) for x in ids}) > 1


@pytest.mark.slow
def test_world_mixed_prompts_without_a_shared_prefix(world, tok):
    """English and Japanese prompts (nothing shared but BOS), short and long, one slot more than half."""
    rows = fitness_rows(10, 100)
    prompts = mgsm.prompts(rows) + [PROMPT_EN.format(question=q) for q in
                                    ("Ken has 3 apples and buys 4 more. How many?", "2 + 2?")]
    prompts += ["りんご", "### 指示:\n3 + 4 ="]
    random.Random(0).shuffle(prompts)
    for name in ("ja", "math-a"):
        assert_same(world[name], tok, prompts, 32, IMPROVED_STOPS, batch_size=8, hf_batch=5)


@pytest.mark.slow
def test_world_dfs_model(world, tok):
    """A DFS model over ja and math-a (a layer visited twice, scaled hops): the hop layers' own cache
    slots work with the slot cache."""
    hops = [Hop(0, 0, 1.0), Hop(0, 1, 1.0), Hop(1, 1, 0.9), Hop(0, 2, 1.1), Hop(1, 2, 1.0), Hop(1, 3, 1.2),
            Hop(0, 3, 0.8)]
    dfs = build_dfs_model(world["ja"], world["math-a"], hops)
    assert decode.unsupported(dfs, tok, IMPROVED_STOPS) is None
    assert_same(dfs, tok, mgsm.prompts(fitness_rows(12, 40)), 40, IMPROVED_STOPS, batch_size=4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_on_cuda(tok):
    """Device-agnostic: the same equality on a GPU (rows, slots and stop strings as on the CPU)."""
    model = AutoModelForCausalLM.from_pretrained(ASSETS / "models" / "math-a", dtype=torch.float32).to("cuda").eval()
    prompts = mgsm.prompts(fitness_rows(24))
    assert generate(model, tok, prompts, max_new_tokens=48, batch_size=5, stops=IMPROVED_STOPS) == \
        generate_static(model, tok, prompts, max_new_tokens=48, batch_size=8, stops=IMPROVED_STOPS)


def test_generate_uses_the_new_path_for_greedy_requests(world, tok, monkeypatch):
    calls = []
    real = decode.greedy
    monkeypatch.setattr(decode, "greedy", lambda *a, **k: calls.append(1) or real(*a, **k))
    prompts = mgsm.prompts(fitness_rows(3))
    out = generate(world["ja"], tok, prompts, max_new_tokens=16, batch_size=2, stops=IMPROVED_STOPS,
                   num_beams=1, repetition_penalty=1.0)
    assert calls and out == generate_static(world["ja"], tok, prompts, max_new_tokens=16, stops=IMPROVED_STOPS)


def test_no_prompts_and_a_progress_bar(world, tok, capsys):
    assert generate(world["ja"], tok, [], max_new_tokens=8) == []
    prompts = mgsm.prompts(fitness_rows(3))
    assert generate(world["ja"], tok, prompts, max_new_tokens=8, batch_size=2, progress=True) == \
        generate_static(world["ja"], tok, prompts, max_new_tokens=8)
    assert "3/3" in capsys.readouterr().err


def test_other_requests_fall_back_to_hf_generate(world, tok, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the new path was used")
    model, prompts = world["ja"], mgsm.prompts(fitness_rows(2))
    assert "num_beams" in decode.unsupported(model, tok, num_beams=2)
    assert "repetition_penalty" in decode.unsupported(model, tok, repetition_penalty=1.3)
    monkeypatch.setattr(decode, "greedy", refuse)
    for kw in ({"num_beams": 2}, {"repetition_penalty": 1.3}):
        assert generate(model, tok, prompts, max_new_tokens=8, **kw) == \
            generate_static(model, tok, prompts, max_new_tokens=8, **kw)
    gc = model.generation_config
    gc.no_repeat_ngram_size = 2
    try:
        assert "no_repeat_ngram_size" in decode.unsupported(model, tok)
        generate(model, tok, prompts, max_new_tokens=8)
    finally:
        gc.no_repeat_ngram_size = None
    assert "empty stop string" in decode.unsupported(model, tok, stops=[""])


# ---------------------------------------------------------------------------------------- tiny random models

def tiny(tmp_path, arch="llama", seed=0, eos_from=None, **over):
    """A tiny random model over the world's vocabulary (hidden 32, 2 layers, grouped KV heads)."""
    over = dict(dict(vocab_size=1270, num_hidden_layers=2, max_position_embeddings=256), **over)
    save_model(tmp_path / f"{arch}{seed}", arch, seed=seed, **over)
    kw = {"attn_implementation": over.pop("attn", "sdpa")}
    return AutoModelForCausalLM.from_pretrained(tmp_path / f"{arch}{seed}", dtype=torch.float32, **kw).eval()


def make_eos_frequent(model, tok, prompts):
    """Rows end early and at different steps: EOS takes over the most frequent generated token."""
    ids = hf_ids(model, tok, prompts, 12)
    t = max(set(sum(ids, [])), key=sum(ids, []).count)
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] = model.lm_head.weight[t] * 1.05


PROMPTS = mgsm.prompts(fitness_rows(9, 300)) + ["りんごが3個あります。", "Ken has", "1 + 1 =", "### 応答:"]


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_tiny_models_with_early_eos_and_refill(tmp_path, tok, arch):
    model = tiny(tmp_path, arch)
    make_eos_frequent(model, tok, PROMPTS)
    ids = assert_same(model, tok, PROMPTS, 20, batch_size=3)
    ended = [x for x in ids if x[-1] == tok.eos_token_id]
    assert ended and len({len(x) for x in ended}) > 1        # EOS at several steps
    assert_same(model, tok, PROMPTS, 20, batch_size=64)        # every prompt in one batch
    assert_same(model, tok, PROMPTS[:1], 20, batch_size=1)
    assert_same(model, tok, PROMPTS, 20, batch_size=4, shared_prefix=False, refill=1)


def test_the_cache_never_holds_more_than_the_longest_row_plus_its_room(tmp_path, tok):
    """Long answers, few slots, rows refilled: the window moves many times, and the buffers stay within
    the longest row (prompt + new tokens) + 1 + GROW columns, the memory plan's per-row columns."""
    model = tiny(tmp_path, "llama")
    make_eos_frequent(model, tok, PROMPTS)
    stats = {}
    n = 2 * decode.GROW + 40
    assert_same(model, tok, PROMPTS, n, batch_size=3, stats=stats)
    longest = max(len(x) for x in tok(PROMPTS)["input_ids"])
    assert stats["relayouts"] >= 2 and stats["columns"] <= longest + n + 1 + decode.GROW, stats


def test_eager_attention(tmp_path, tok):
    model = tiny(tmp_path, seed=3, attn="eager")
    assert model.config._attn_implementation == "eager"
    assert_same(model, tok, PROMPTS, 12, batch_size=5)


def clean(text):
    return text and "\ufffd" not in text


def test_stop_strings_across_tokens_and_the_prompts_end(tmp_path, tok):
    model = tiny(tmp_path, seed=1)
    ref = hf_ids(model, tok, PROMPTS, 16)
    stops = []
    # a stop string made of the end of one generated token and the start of the next, in some row
    for row in ref:
        pieces = [tok.decode([t]) for t in row]
        for a, b in zip(pieces[3:], pieces[4:]):
            if clean(a.strip()) and clean(b.strip()) and a[-1] != " " and b[0] != " ":
                stops.append(a[-1] + b[0])
                break
        if len(stops) == 2:
            break
    # and one made of the prompt's last character and the first generated token's first one
    for p, row in zip(PROMPTS, ref):
        first = tok.decode(row[:1])
        if clean(first) and first[0] != " ":
            stops.append(p[-1] + first[0])
            break
    assert len(stops) == 3, stops
    ids = assert_same(model, tok, PROMPTS, 16, stops, batch_size=4)
    assert sum(len(x) < 16 for x in ids) >= 3


def test_a_sliding_window_shorter_than_the_sequences_falls_back(tmp_path, tok):
    model = tiny(tmp_path, "mistral", seed=2, sliding_window=24)
    with pytest.raises(decode.Unsupported):
        decode.greedy(model, tok, PROMPTS, max_new_tokens=8)
    assert generate(model, tok, PROMPTS, max_new_tokens=8) == generate_static(model, tok, PROMPTS, max_new_tokens=8)


def test_tiny_dfs_model(tmp_path, tok):
    a, b = tiny(tmp_path, seed=4), tiny(tmp_path, seed=5)
    dfs = build_dfs_model(a, b, [Hop(0, 0, 1.0), Hop(1, 0, 1.3), Hop(0, 1, 0.7), Hop(0, 1, 1.0), Hop(1, 1, 1.1)])
    assert_same(dfs, tok, PROMPTS, 12, batch_size=3)


# ---------------------------------------------------------------------------------------- stop strings

def byte_fallback_tokenizer():
    """A Llama-style tokenizer (Metaspace, <0xNN> byte fallback) over a tiny vocabulary."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in ["▁", "R", "e", "s", "p", "o", "n", "I", "t", "r", "u", "c", "i", "#", ":", "x", "1", "2",
                  "Re", "sp", "on", "se", "Res", "pon", "▁R", "▁Re", "In", "st", "ru", "ct", "ion"]:
        vocab.setdefault(piece, len(vocab))
    merges = [("R", "e"), ("s", "p"), ("o", "n"), ("s", "e"), ("Re", "s"), ("p", "on"), ("▁", "R"), ("▁R", "e"),
              ("I", "n"), ("s", "t"), ("r", "u"), ("c", "t"), ("i", "on")]
    merges = [m for m in merges if m[0] in vocab and m[1] in vocab and "".join(m) in vocab]
    t = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("kind", ["byte_level", "byte_fallback"])
def test_stop_matcher_agrees_with_hf_stop_string_criteria(tok, kind):
    """At every step of many token sequences (texts with the stop strings in them, cut anywhere), the
    incremental matcher stops exactly when HF's criterion does."""
    tk = tok if kind == "byte_level" else byte_fallback_tokenizer()
    stops = IMPROVED_STOPS + ["指示", "2 1", "e"] if kind == "byte_level" else ["Response", "Instruction:", "指", "x1"]
    matcher = decode.StopMatcher(tk, stops)
    assert matcher.mode == kind
    crit = StopStringCriteria(tk, stops)
    rng = random.Random(0)
    words = ["Response", "Respo", "nse:", "Instruction", "### 指示", "指", "示す", "x1", "2 1", " ", "\n", "abc",
             "答えは", "です", "Res", "ponse", "e", "12"]
    found = 0
    for _ in range(60):
        ids = tk("".join(rng.choice(words) for _ in range(8)), add_special_tokens=False)["input_ids"]
        if not ids:
            continue
        start = rng.randrange(len(ids))                     # ids[:start] plays the prompt
        tail = matcher.tail(ids[:start])
        for t in range(start, len(ids)):
            stopped, tail = matcher.step(tail, ids[t])
            want = bool(crit(torch.tensor([ids[:t + 1]]), None)[0])
            assert stopped == want, (tk.convert_ids_to_tokens(ids[:t + 1]), stops)
            found += want
            if stopped:
                break
    assert found > 10


def test_groups_minimise_padded_tokens_plus_forward_costs():
    rng = random.Random(1)
    for _ in range(30):
        lengths = sorted((rng.randrange(1, 40) for _ in range(rng.randrange(1, 8))), reverse=True)
        cost = rng.choice([0, 5, 30, 200])
        runs = decode.groups(lengths, cost)
        assert runs[0][0] == 0 and runs[-1][1] == len(lengths) and all(a[1] == b[0] for a, b in zip(runs, runs[1:]))

        def total(rs):
            return sum(cost + (b - a) * lengths[a] for a, b in rs)
        best = min(total(list(zip((0,) + c, c + (len(lengths),))))
                   for r in range(len(lengths)) for c in itertools.combinations(range(1, len(lengths)), r))
        assert total(runs) == best
