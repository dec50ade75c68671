"""evovlm's model layer and plain merge on tiny random Llava / LlavaNext models built here."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from evollm.checkpoint import Checkpoint
from evollm.recipe import load_recipe
from evovlm.export import merge_vlm
from evovlm.model import TowerView, lm_name, part, tower_names

VOCAB_LM, VOCAB_VLM = 96, 98          # the VLM adds two tokens (<image>, <pad>) to its LM's vocabulary


def text_cfg(vocab, layers=2):
    from transformers import MistralConfig
    return MistralConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=False)


def make_vlm(path, kind="llava", seed=0):
    from transformers import (CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaNextConfig,
                              LlavaNextForConditionalGeneration)
    torch.manual_seed(seed)
    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          image_size=32, patch_size=16, projection_dim=32)
    if kind == "llava":
        m = LlavaForConditionalGeneration(LlavaConfig(vision_config=vc, text_config=text_cfg(VOCAB_VLM),
                                                      image_token_index=VOCAB_VLM - 2, image_seq_length=5,
                                                      vision_feature_select_strategy="full"))
    else:
        m = LlavaNextForConditionalGeneration(LlavaNextConfig(
            vision_config=vc, text_config=text_cfg(VOCAB_VLM), image_token_index=VOCAB_VLM - 2,
            image_grid_pinpoints=[[32, 32], [32, 64]]))
    m.save_pretrained(path)
    return m


def make_lm(path, base_state=None, seed=1, noise=0.0):
    from transformers import MistralForCausalLM
    torch.manual_seed(seed)
    m = MistralForCausalLM(text_cfg(VOCAB_LM))
    if base_state is not None:
        m.load_state_dict(base_state)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * noise)
    m.save_pretrained(path)
    return m.state_dict()


def vlm_family(tmp_path, kind="llava"):
    """base LM, a Japanese LM fine-tuned from it, and a VLM whose language tower also comes from it."""
    base = make_lm(tmp_path / "base", seed=1)
    make_lm(tmp_path / "ja", base_state=base, seed=2, noise=0.02)
    vlm = make_vlm(tmp_path / "vlm", kind)
    ck = Checkpoint(tmp_path / "vlm")
    sd = {k: ck.get(k) for k in ck.names()}
    g = torch.Generator().manual_seed(3)
    for lm_key, vlm_key in tower_names(ck.names()).items():   # tower = base (shared rows) + noise
        t = base[lm_key].clone()
        if lm_key in ("model.embed_tokens.weight", "lm_head.weight"):
            t = torch.cat([t, sd[vlm_key][VOCAB_LM:]])
        sd[vlm_key] = t + torch.randn(t.shape, generator=g) * 0.02
    from safetensors.torch import save_file
    save_file(sd, str(tmp_path / "vlm" / "model.safetensors"), metadata={"format": "pt"})
    return vlm


@pytest.mark.parametrize("kind", ["llava", "llava_next"])
def test_name_mapping_round_trip(tmp_path, kind):
    m = make_vlm(tmp_path / "v", kind)
    on_disk = Checkpoint(tmp_path / "v").names()
    in_memory = [k for k, _ in m.named_parameters()]
    from transformers import MistralForCausalLM
    lm_names = {k for k, _ in MistralForCausalLM(text_cfg(VOCAB_VLM)).named_parameters()}
    for names in (on_disk, in_memory):              # both layouts map onto the causal LM's names
        mp = tower_names(names)
        assert set(mp) == lm_names
        assert all(lm_name(v) == k for k, v in mp.items())
        others = [n for n in names if n not in mp.values()]
        assert others and all(part(n) in ("vision tower", "projector") for n in others)
    if kind == "llava_next":
        assert any("image_newline" in n for n in on_disk)


@pytest.mark.parametrize("kind", ["llava", "llava_next"])
def test_plain_merge_changes_only_the_language_tower(tmp_path, kind):
    vlm_family(tmp_path, kind)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "merge_method": "ties", "base_model": str(tmp_path / "base"),
        "models": [{"model": str(tmp_path / "vlm"), "parameters": {"weight": 1.0, "density": 0.6}},
                   {"model": str(tmp_path / "ja"), "parameters": {"weight": 0.7, "density": 0.5}}],
        "dtype": "float32"}))
    logs = []
    s = merge_vlm(load_recipe(recipe), tmp_path / "out", log=logs.append)
    assert any("2 extra row(s)" in line for line in logs) and s["merged"] == len(tower_names(
        Checkpoint(tmp_path / "vlm").names()))
    src, out = load_file(str(tmp_path / "vlm" / "model.safetensors")), load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(src) == set(out)
    tower = set(tower_names(src).values())
    for k in src:
        if k in tower:
            assert not torch.equal(src[k], out[k]), k          # every language-tower tensor merged
        else:
            assert torch.equal(src[k], out[k]) and src[k].dtype == out[k].dtype, k   # bit-identical
    emb = tower_names(src)["model.embed_tokens.weight"]
    assert torch.equal(out[emb][VOCAB_LM:], src[emb][VOCAB_LM:])      # the VLM's added rows kept
    # the shared rows are exactly what evollm's engine gives for the language towers alone
    view = TowerView(Checkpoint(tmp_path / "vlm"), VOCAB_LM)
    assert view.shape("model.embed_tokens.weight")[0] == VOCAB_LM
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == \
        json.loads((tmp_path / "vlm" / "config.json").read_text())


@pytest.mark.parametrize("method,per", [
    ("dare_ties", ({"weight": 0.8, "density": 0.6}, {"weight": [0.5, 1.0], "density": 0.4})),
    ("ties", ({"weight": 1.0, "density": 0.5}, {"weight": 0.7, "density": [{"filter": "mlp", "value": 0.3}, {"value": 0.6}]}))])
def test_in_memory_vlm_candidate_equals_its_export(tmp_path, method, per):
    """A VLM search's candidate (merged into views of the VLM's language tower, vocabulary rows
    included) is what `evovlm merge` exports for the same recipe and seed: same plan, same streams."""
    from transformers import LlavaForConditionalGeneration

    from evollm.engine.memory import InMemoryMerger
    from evollm.search.workbench import read_state
    from evovlm.search import tower_targets
    vlm_family(tmp_path)
    refs = {"vlm": str(tmp_path / "vlm"), "ja": str(tmp_path / "ja")}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "merge_method": method, "base_model": str(tmp_path / "base"), "dtype": "float32", "out_dtype": "float32",
        "models": [{"model": refs[n], "parameters": p} for n, p in zip(("vlm", "ja"), per)]}))
    merge_vlm(load_recipe(recipe), tmp_path / "out", seed=5, log=lambda *a: None)
    exported = load_file(str(tmp_path / "out" / "model.safetensors"))

    vlm = LlavaForConditionalGeneration.from_pretrained(tmp_path / "vlm", dtype=torch.float32)
    before = {k: v.clone() for k, v in vlm.state_dict().items()}
    targets = tower_targets(vlm, VOCAB_LM)
    shapes = {k: tuple(t.shape) for k, t in targets.items()}
    sources = {"vlm": read_state(refs["vlm"], shapes, TowerView(Checkpoint(tmp_path / "vlm"), VOCAB_LM)),
               "ja": read_state(refs["ja"], shapes)}
    merger = InMemoryMerger(vlm, read_state(str(tmp_path / "base"), shapes), sources, targets=targets,
                            refs=refs, base_ref=str(tmp_path / "base"))
    merger.merge_recipe(load_recipe(recipe), seed=5)
    after = vlm.state_dict()
    mine, theirs = tower_names(after), tower_names(exported)     # module layout vs the saved layout
    assert set(mine) == set(theirs) == set(targets)
    for k in mine:
        assert torch.equal(after[mine[k]], exported[theirs[k]]), k
    assert all(torch.equal(v, before[k]) for k, v in after.items() if lm_name(k) is None)  # vision side untouched
    emb = mine["model.embed_tokens.weight"]
    assert torch.equal(after[emb][VOCAB_LM:], before[emb][VOCAB_LM:])   # the VLM's extra rows kept


def test_merged_vlm_reloads_and_generates_from_an_image(tmp_path):
    from PIL import Image
    from transformers import LlavaForConditionalGeneration
    vlm_family(tmp_path, "llava")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "merge_method": "task_arithmetic", "base_model": str(tmp_path / "base"),
        "models": [{"model": str(tmp_path / "vlm"), "parameters": {"weight": 1.0}},
                   {"model": str(tmp_path / "ja"), "parameters": {"weight": 0.5}}]}))
    merge_vlm(load_recipe(recipe), tmp_path / "out", log=lambda *a: None)
    m = LlavaForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    from transformers import CLIPImageProcessor
    pix = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})(
        [Image.new("RGB", (40, 40), "red")], return_tensors="pt")["pixel_values"]
    ids = torch.tensor([[1] + [VOCAB_LM] * 5 + [5, 6]])          # image token x image_seq_length, then text
    out = m.generate(input_ids=ids, pixel_values=pix, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 4)


def test_errors_name_what_is_wrong(tmp_path):
    from evollm.engine.disk import MergeError
    vlm_family(tmp_path)
    r = tmp_path / "r.yaml"
    r.write_text(yaml.safe_dump({"merge_method": "linear", "models": [
        {"model": str(tmp_path / "ja"), "parameters": {"weight": 1}},
        {"model": str(tmp_path / "base"), "parameters": {"weight": 1}}]}))
    with pytest.raises(MergeError, match="exactly one LLaVA-style VLM"):
        merge_vlm(load_recipe(r), tmp_path / "o1")
    from transformers import MistralForCausalLM
    MistralForCausalLM(text_cfg(VOCAB_LM, layers=3)).save_pretrained(tmp_path / "deep")
    r.write_text(yaml.safe_dump({"merge_method": "task_arithmetic", "base_model": str(tmp_path / "base"),
                                 "models": [{"model": str(tmp_path / "vlm"), "parameters": {"weight": 1}},
                                            {"model": str(tmp_path / "deep"), "parameters": {"weight": 1}}]}))
    with pytest.raises(MergeError, match="num_hidden_layers"):
        merge_vlm(load_recipe(r), tmp_path / "o2")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_vlm_dfs_shares_layers_and_exports_an_equal_vlm(tmp_path):
    from transformers import LlavaForConditionalGeneration, MistralForCausalLM

    from evollm.dfs import Hop
    from evovlm.search import build_vlm_dfs, save_vlm_dfs
    vlm_family(tmp_path, "llava")
    vlm = LlavaForConditionalGeneration.from_pretrained(tmp_path / "vlm", dtype=torch.float32).eval()
    lm = MistralForCausalLM.from_pretrained(tmp_path / "ja", dtype=torch.float32).eval()
    hops = [Hop(0, 0, 1.0), Hop(1, 0, 0.8), Hop(0, 1, 1.2), Hop(0, 0, 0.9), Hop(1, 1, 1.1)]
    dfs = build_vlm_dfs(vlm, lm, hops)
    assert dfs.model.vision_tower is vlm.model.vision_tower
    assert dfs.model.language_model.layers[0].layer is vlm.model.language_model.layers[0]
    pix = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[1] + [VOCAB_VLM - 2] * 5 + [5, 6, 7]])
    with torch.no_grad():
        cached = dfs.generate(input_ids=ids, pixel_values=pix, max_new_tokens=6, do_sample=False)
        plain = dfs.generate(input_ids=ids, pixel_values=pix, max_new_tokens=6, do_sample=False, use_cache=False)
        assert torch.equal(cached, plain)
        save_vlm_dfs(vlm, lm, hops, tmp_path / "out")
        out = LlavaForConditionalGeneration.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
        assert out.config.text_config.num_hidden_layers == len(hops)
        x = dfs(input_ids=ids, pixel_values=pix).logits
        y = out(input_ids=ids, pixel_values=pix).logits
        # RMSNorm's epsilon is the only difference: with the stream's tiny scale in this random model
        # (mean square ~4e-4 against eps 1e-6) it shows at 1e-3; without it the two are equal to rounding
        assert torch.allclose(x, y, atol=1e-3), (x - y).abs().max()
        for m in list(vlm.modules()) + list(lm.modules()) + list(out.modules()):
            if hasattr(m, "variance_epsilon"):
                m.variance_epsilon = 1e-30
        x = dfs(input_ids=ids, pixel_values=pix).logits
        y = out(input_ids=ids, pixel_values=pix).logits
    assert torch.allclose(x, y, atol=1e-5), (x - y).abs().max()
    src = load_file(str(tmp_path / "vlm" / "model.safetensors"))
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert all(torch.equal(src[k], got[k]) for k in src if "vision_tower" in k or "projector" in k)
