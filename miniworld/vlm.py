"""The world's source VLM `vlm-en`: an open_clip ViT + a LLaVA projector + the world's base LM.

Recipe (`train_vlm`):
0. Pre-training of a tiny open_clip ViT (inside an open_clip `CLIP` with a tiny text tower) on fresh
   pictures: scene-attribute heads on the image embedding (kind and colour per slot, time, ground),
   plus, if `clip_weight` > 0, the contrastive loss against English captions. (Measured on one CPU
   thread: contrastive-only, 800 steps in 100 s, gave a linear probe 46% slot-kind accuracy; the
   attribute heads reach ~90% in 1000 steps and 40 s. So the contrastive weight defaults to 0.)
1. Its visual weights are converted into a transformers `CLIPVisionModel` (`openclip_to_hf_vision`;
   features are identical), assembled with the base LM into a `LlavaForConditionalGeneration`.
2. Stage 1: projector only, on English captions in the base LM's own format (`<image>\n{caption}`,
   as LLaVA's pre-training; the base never saw a chat turn). Stage 2: projector + language model
   (+ vision tower at a lower rate) on English captions and English QA in chat turns
   `chat(q, SYSTEM_EN, image=True)`. The loss covers the answer tokens and `</s>` only. Every batch
   draws fresh scenes (no epochs); rows sharing a system prompt run it once (`answer_loss`).
   Options (attempt 11): stage 1 may also answer English questions in chat turns (`stage1_qa_frac`),
   or pull the frozen LM's hidden states after the image towards those after the scene's text
   description (`stage1_mimic`, `mimic_loss`); stage 2 may keep stage 1's projector.
The VLM never sees a Japanese answer. A fraction `ja_question_frac` of stage-2 QA examples asks the
*Japanese* question (under the Japanese system prompt, or with `ja_question_system="en"` the English one)
and still trains the *English* answer, like a real English VLM that understands some Japanese but
answers in English.
Scenes come from the `train` bucket of `scenes.split_of`, disjoint from every evaluation scene.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from evollm.generate import cache_keyword
from . import scenes as S
from .formats import IMAGE_TOKEN, SYSTEM_EN, SYSTEM_JA, chat
from .scene_text import facts_en

CAPTION_QUESTIONS = ("Write a short caption for this picture.", "Describe the image briefly.",
                     "What does this picture show?")


# --------------------------------------------------------------------------- vision tower

def openclip_model(vocab_size: int, image_size: int = 48, patch_size: int = 16, width: int = 128,
                   layers: int = 3, heads: int = 4, embed_dim: int = 64, text_width: int = 128,
                   text_layers: int = 2, context_length: int = 48, eos_id: int = 2, pad_id: int = 0):
    """A tiny open_clip CLIP: ViT (exact GELU, no layer scale) + causal text tower pooled at `</s>`
    (the world tokenizer's ids: `</s>` 2, `<pad>` 0)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    vision = CLIPVisionCfg(layers=layers, width=width, head_width=width // heads, patch_size=patch_size,
                           image_size=image_size)
    text = CLIPTextCfg(context_length=context_length, vocab_size=vocab_size, width=text_width,
                       heads=max(1, text_width // 32), layers=text_layers, pool_type="eos", eos_id=eos_id,
                       pad_id=pad_id)
    return CLIP(embed_dim=embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=False)


def hf_vision_config(visual):
    """The `CLIPVisionConfig` matching an open_clip `VisionTransformer`."""
    from transformers import CLIPVisionConfig
    blk = visual.transformer.resblocks[0]
    width = visual.conv1.out_channels
    return CLIPVisionConfig(hidden_size=width, intermediate_size=blk.mlp.c_fc.out_features,
                            num_hidden_layers=len(visual.transformer.resblocks),
                            num_attention_heads=blk.attn.num_heads, image_size=visual.image_size[0],
                            patch_size=visual.patch_size[0], hidden_act="gelu", layer_norm_eps=blk.ln_1.eps,
                            projection_dim=visual.output_dim, num_channels=3)


def openclip_to_hf_vision(visual):
    """A transformers `CLIPVisionModel` with the weights of open_clip `visual` (the projection is dropped).

    Its `post_layernorm(last_hidden_state)` equals open_clip's `ln_post` tokens, and its
    `pooler_output @ visual.proj` equals `visual(x)`.
    """
    from transformers import CLIPVisionModel
    unsupported = [name for name, bad in (
        ("attentional pooling", getattr(visual, "attn_pool", None) is not None),
        ("pool_type != 'tok'", getattr(visual, "pool_type", "tok") != "tok"),
        ("final_ln_after_pool", getattr(visual, "final_ln_after_pool", False)),
        ("no ln_pre", isinstance(visual.ln_pre, torch.nn.Identity)),
        ("layer scale", not isinstance(visual.transformer.resblocks[0].ls_1, torch.nn.Identity)),
        ("non-GELU activation", type(visual.transformer.resblocks[0].mlp.gelu) is not torch.nn.GELU),
    ) if bad]
    if unsupported:
        raise ValueError(f"open_clip vision tower not convertible to CLIPVisionModel: {', '.join(unsupported)}")
    hf = CLIPVisionModel(hf_vision_config(visual))
    p = "vision_model." if hasattr(hf, "vision_model") else ""      # older transformers nest the tower
    sd = {p + "embeddings.patch_embedding.weight": visual.conv1.weight,
          p + "embeddings.class_embedding": visual.class_embedding,
          p + "embeddings.position_embedding.weight": visual.positional_embedding,
          p + "pre_layrnorm.weight": visual.ln_pre.weight, p + "pre_layrnorm.bias": visual.ln_pre.bias,
          p + "post_layernorm.weight": visual.ln_post.weight, p + "post_layernorm.bias": visual.ln_post.bias}
    for i, blk in enumerate(visual.transformer.resblocks):
        q = f"{p}encoder.layers.{i}."
        for name, w, b in zip(("q_proj", "k_proj", "v_proj"), blk.attn.in_proj_weight.chunk(3),
                              blk.attn.in_proj_bias.chunk(3)):
            sd[q + f"self_attn.{name}.weight"], sd[q + f"self_attn.{name}.bias"] = w, b
        for dst, src in (("self_attn.out_proj", blk.attn.out_proj), ("layer_norm1", blk.ln_1),
                         ("layer_norm2", blk.ln_2), ("mlp.fc1", blk.mlp.c_fc), ("mlp.fc2", blk.mlp.c_proj)):
            sd[q + dst + ".weight"], sd[q + dst + ".bias"] = src.weight, src.bias
    hf.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=True)
    return hf


# --------------------------------------------------------------------------- processor and model

def make_processor(tokenizer, image_size: int, patch_size: int):
    """`LlavaProcessor`: a CLIP image processor at `image_size` and the world's tokenizer; each
    `<image>` becomes (image_size/patch_size)^2 + 1 image tokens (patches + CLS, strategy 'full')."""
    from transformers import CLIPImageProcessor, LlavaProcessor
    tokenizer.padding_side = "left"          # batched generation (not persisted by save_pretrained)
    ip = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                            do_resize=True, do_center_crop=True, do_convert_rgb=True)
    return LlavaProcessor(image_processor=ip, tokenizer=tokenizer, patch_size=patch_size,
                          vision_feature_select_strategy="full", num_additional_image_tokens=1,
                          image_token=IMAGE_TOKEN)


def build_llava(hf_vision, base_dir, tokenizer):
    """`LlavaForConditionalGeneration` = `hf_vision` + a fresh projector + the LM in `base_dir`."""
    from transformers import AutoModelForCausalLM, LlavaConfig, LlavaForConditionalGeneration
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if len(tokenizer) > base.config.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the base LM in {base_dir} only "
                         f"{base.config.vocab_size} (vocab_size in {Path(base_dir) / 'config.json'})")
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_id is None or image_id == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer has no {IMAGE_TOKEN} token")
    vc = hf_vision.config
    n_img = (vc.image_size // vc.patch_size) ** 2 + 1
    cfg = LlavaConfig(vision_config=vc, text_config=base.config, image_token_index=image_id,
                      projector_hidden_act="gelu", vision_feature_layer=-1,
                      vision_feature_select_strategy="full", image_seq_length=n_img)
    model = LlavaForConditionalGeneration(cfg)
    model.model.vision_tower.load_state_dict(hf_vision.state_dict())
    model.model.language_model.load_state_dict(base.model.state_dict())
    model.lm_head.load_state_dict(base.lm_head.state_dict())
    gc = model.generation_config
    gc.pad_token_id, gc.eos_token_id, gc.bos_token_id = (tokenizer.pad_token_id, tokenizer.eos_token_id,
                                                         tokenizer.bos_token_id)
    return model


@torch.no_grad()
def init_projector(model, pixel_values: torch.Tensor) -> dict:
    """Data-dependent projector init: standardise the selected vision features (folded into
    `linear_1`) and scale `linear_2` so image tokens start at the RMS of the LM's word embeddings
    (raw ViT residual features are ~50x larger and mostly a shared offset, which drowns the text)."""
    m = model.model
    cfg = model.config
    hs = m.vision_tower(pixel_values, output_hidden_states=True).hidden_states[cfg.vision_feature_layer]
    if cfg.vision_feature_select_strategy == "default":
        hs = hs[:, 1:]
    feats = hs.reshape(-1, hs.shape[-1])
    mu, sd = feats.mean(0), feats.std(0) + 1e-5
    p = m.multi_modal_projector
    p.linear_1.weight.div_(sd)
    if p.linear_1.bias is not None:
        p.linear_1.bias.sub_(p.linear_1.weight @ mu)
    target = m.get_input_embeddings().weight.pow(2).mean().sqrt()
    scale = target / p(feats).pow(2).mean().sqrt()
    p.linear_2.weight.mul_(scale)
    if p.linear_2.bias is not None:
        p.linear_2.bias.mul_(scale)
    return {"feature_rms": round(float(feats.pow(2).mean().sqrt()), 3), "embedding_rms": round(float(target), 4)}


# --------------------------------------------------------------------------- training data

def _pixels(processor, images) -> torch.Tensor:
    return processor.image_processor(images, return_tensors="pt")["pixel_values"]


class SceneStream:
    """Fresh scenes of the `train` bucket, drawn from a seeded RNG (the VLM never sees an evaluation scene)."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def take(self, n: int) -> list:
        out = []
        while len(out) < n:
            s = S.random_scene(self.rng)
            if S.split_of(s.signature()) == "train":
                out.append(s)
        return out


#: scene attributes predicted from the pooled image embedding in pre-training: per slot the kind
#: (or empty) and the colour (or empty), then the time of day and the ground
_KINDS, _COLORS = sorted(S.KIND), sorted(S.RGB)
ATTRIBUTE_SIZES = [len(_KINDS) + 1] * 3 + [len(_COLORS) + 1] * 3 + [len(S.TIMES), len(S.GROUNDS)]


def scene_attributes(scene) -> list:
    kinds, colors = [len(_KINDS)] * 3, [len(_COLORS)] * 3
    for o in scene.objects:
        kinds[o.slot], colors[o.slot] = _KINDS.index(o.kind), _COLORS.index(o.color)
    return kinds + colors + [S.TIMES.index(scene.time), S.GROUNDS.index(scene.ground)]


def _qa_example(scene, rng: random.Random, ja_question_frac: float, short: bool = False,
                ja_question_system: str = "ja") -> tuple:
    """(chat prompt, English answer) for one random QA of `scene`; a share asks the Japanese question
    under the `ja_question_system` ("ja" or "en") system prompt; `short`: VQA-style short answers
    (`red`, `3`, `evening`)."""
    en, ja = S.qa_en(scene, short), S.qa_ja(scene)
    assert [t for t, _, _ in en] == [t for t, _, _ in ja], "qa_en and qa_ja must align"
    i = rng.randrange(len(en))
    if rng.random() < ja_question_frac:
        system = SYSTEM_JA if ja_question_system == "ja" else SYSTEM_EN
        return chat(ja[i][1], system=system, image=True), " " + en[i][2]
    return chat(en[i][1], system=SYSTEM_EN, image=True), " " + en[i][2]


def _caption_example(scene, rng: random.Random, plain: bool) -> tuple:
    """(prompt, caption): plain `<image>\n` (stage 1, the base LM's own text format) or a chat turn."""
    caption = S.caption_en(scene, rng.randrange(4))
    if plain:
        return IMAGE_TOKEN + "\n", caption
    return chat(rng.choice(CAPTION_QUESTIONS), system=SYSTEM_EN, image=True), " " + caption


class _Batcher:
    """Tokenises [(image, prompt, answer)] into micro-batches that share their prompt's prefix.

    The prefix (the text before `<image>`: BOS and the system prompt) is the same for every row of
    a micro-batch and is run once (`answer_loss`); the rest (image tokens, question, answer, `</s>`)
    is right-padded. Labels cover the answer and `</s>` only."""

    def __init__(self, processor):
        self.processor, self.tok, self._cache = processor, processor.tokenizer, {}
        probe = processor(images=[S.render(S.scenes_for("train", 1, 0)[0])], text=[chat("x", image=True)])
        self.n_img = int((torch.tensor(probe["input_ids"][0]) == processor.image_token_id).sum())

    def prompt_ids(self, prompt: str) -> tuple:
        """(prefix ids, rest ids) of `prompt`; their concatenation is what the processor produces."""
        if prompt not in self._cache:
            head, sep, tail = prompt.partition(IMAGE_TOKEN)
            rest = (sep + tail).replace(IMAGE_TOKEN, IMAGE_TOKEN * self.n_img)
            self._cache[prompt] = (self.tok(head)["input_ids"], self.tok(rest, add_special_tokens=False)["input_ids"])
        return self._cache[prompt]

    def __call__(self, items, micro: int = 1) -> list:
        """Micro-batches: one group per prefix, each split into up to `micro` length-sorted chunks."""
        groups = {}
        for image, prompt, answer in items:
            pre, rest = self.prompt_ids(prompt)
            ans = self.tok(answer, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
            groups.setdefault(tuple(pre), []).append((image, rest + ans, [-100] * len(rest) + ans))
        out = []
        for pre, rows in groups.items():
            rows.sort(key=lambda r: len(r[1]))
            size = -(-len(rows) // micro)
            out += [self._pad(pre, rows[i:i + size]) for i in range(0, len(rows), size)]
        return out

    def _pad(self, prefix, rows) -> dict:
        n = max(len(r[1]) for r in rows)
        ids = torch.full((len(rows), n), self.tok.pad_token_id)
        labels = torch.full((len(rows), n), -100)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, (_, s, l) in enumerate(rows):
            ids[i, :len(s)], labels[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), torch.tensor(l), 1
        return {"prefix_ids": torch.tensor([prefix]), "input_ids": ids, "attention_mask": mask, "labels": labels,
                "pixel_values": _pixels(self.processor, [r[0] for r in rows])}


def answer_loss(model, batches, share_prefix: bool = True) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of all micro-batches; the LM head runs on those only.

    With `share_prefix` the common prefix runs once and its key/value cache is repeated over the
    micro-batch (same loss and gradients as running every row in full, about half the compute)."""
    total, n = 0.0, 0
    for b in batches:
        rows = b["input_ids"].shape[0]
        if share_prefix:
            key = cache_keyword(model.model)
            pre = model.model.language_model(input_ids=b["prefix_ids"], use_cache=True)
            cache = getattr(pre, key)
            cache.batch_repeat_interleave(rows)
            mask = torch.cat([torch.ones(rows, b["prefix_ids"].shape[1], dtype=b["attention_mask"].dtype,
                                         device=b["attention_mask"].device), b["attention_mask"]], 1)
            out = model.model(input_ids=b["input_ids"], pixel_values=b["pixel_values"], attention_mask=mask,
                              use_cache=True, **{key: cache})
        else:
            full = torch.cat([b["prefix_ids"].expand(rows, -1), b["input_ids"]], 1)
            mask = torch.cat([torch.ones_like(b["prefix_ids"]).expand(rows, -1), b["attention_mask"]], 1)
            out = model.model(input_ids=full, pixel_values=b["pixel_values"], attention_mask=mask)
        h = out.last_hidden_state[:, -b["input_ids"].shape[1]:]
        target = b["labels"][:, 1:]
        keep = target != -100
        total = total + F.cross_entropy(model.lm_head(h[:, :-1][keep]).float(), target[keep], reduction="sum")
        n += int(keep.sum())
    return total / max(n, 1)


def _common_tail(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def mimic_rows(stream: SceneStream, rng: random.Random, n: int, image_size: int = S.SIZE, short: bool = False,
               time_share: float = 0.0) -> list:
    """`n` rows for `mimic_loss` on fresh scenes: (image, English question, English facts, answer); a
    `time_share` of them ask the time of day, the rest any of the scene's questions."""
    rows = []
    for sc in stream.take(n):
        qa = S.qa_en(sc, short)
        if time_share and rng.random() < time_share:        # no draw unless asked: older builds stay bit for bit
            qa = [x for x in qa if x[0] == "time"]
        _, q, a = rng.choice(qa)
        rows.append((S.render(sc, image_size), q, facts_en(sc, rng), a))
    return rows


def mimic_loss(model, batcher, rows) -> torch.Tensor:
    """How far the language model's hidden states on a question and its answer after the image are from
    the same model's on them after the scene's text description (no gradient through the text side).

    `rows`: [(image, English question, English description, answer)]. Per layer the mean squared
    difference over the shared tail (question, answer, `</s>`), divided by the text side's mean square;
    averaged over layers. With the language model frozen this trains the projector to show the image as
    the base would read its description, whatever the question's language (the base's look-ups are
    bilingual), not only as an English answer needs."""
    tok, img, txt = batcher.tok, [], []
    for image, q, text, a in rows:
        ans = tok(f" {a}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        pre, rest = batcher.prompt_ids(chat(q, SYSTEM_EN, image=True))
        img.append(pre + rest + ans)
        txt.append(tok(chat(f"{text}\n{q}", SYSTEM_EN))["input_ids"] + ans)
    tails = [_common_tail(i, t) for i, t in zip(img, txt)]

    def padded(seqs):
        n = max(map(len, seqs))
        ids = torch.full((len(seqs), n), tok.pad_token_id)
        mask = torch.zeros_like(ids)
        for r, x in enumerate(seqs):
            ids[r, :len(x)], mask[r, :len(x)] = torch.tensor(x), 1
        dev = next(model.parameters()).device
        return ids.to(dev), mask.to(dev)

    ids, mask = padded(img)
    h_img = model.model(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                        pixel_values=_pixels(batcher.processor, [r[0] for r in rows]).to(ids.device)).hidden_states
    with torch.no_grad():
        ids_t, mask_t = padded(txt)
        h_txt = model.model.language_model(input_ids=ids_t, attention_mask=mask_t, output_hidden_states=True).hidden_states
    pick = lambda h, seqs: torch.cat([h[r, len(x) - k:len(x)] for r, (x, k) in enumerate(zip(seqs, tails))])
    per_layer = []
    for a, b in zip(h_img[1:], h_txt[1:]):
        a, b = pick(a, img).float(), pick(b, txt).float()
        per_layer.append((a - b).pow(2).mean() / b.pow(2).mean().clamp_min(1e-8))
    return torch.stack(per_layer).mean()


def _schedule(step, steps, warmup):
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _optimise(param_groups, steps, make_batch, loss_fn, log, name, log_every=100):
    if steps <= 0:
        return {"steps": 0, "seconds": 0.0, "final_loss": None}
    opt = torch.optim.AdamW(param_groups, weight_decay=0.0, betas=(0.9, 0.98))
    base = [g["lr"] for g in opt.param_groups]
    warmup = max(1, steps // 20)
    t0, losses = time.time(), []
    for step in range(steps):
        for g, lr in zip(opt.param_groups, base):
            g["lr"] = lr * _schedule(step, steps, warmup)
        loss = loss_fn(make_batch(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        losses.append(loss.item())
        if log and ((step + 1) % log_every == 0 or step + 1 == steps):
            recent = losses[-log_every:]
            log(f"{name} step {step + 1}/{steps} loss {sum(recent) / len(recent):.3f} ({time.time() - t0:.0f}s)")
    tail = losses[-20:]
    return {"steps": steps, "seconds": round(time.time() - t0, 1), "final_loss": round(sum(tail) / len(tail), 4)}


def clip_loss(model, image_emb, texts, groups) -> torch.Tensor:
    """Symmetric contrastive loss with soft targets (all items of one group are positives)."""
    img = F.normalize(image_emb, dim=-1)
    txt = F.normalize(model.encode_text(texts), dim=-1)
    logits = model.logit_scale.exp() * img @ txt.T
    same = (groups[:, None] == groups[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                  + torch.sum(-target * F.log_softmax(logits.T, 1), 1).mean())


def attribute_loss(head, image_emb, labels) -> torch.Tensor:
    """Mean cross-entropy of the scene-attribute heads (see `ATTRIBUTE_SIZES`)."""
    logits = head(image_emb).split(ATTRIBUTE_SIZES, -1)
    return sum(F.cross_entropy(lg, labels[:, i]) for i, lg in enumerate(logits)) / len(logits)


def _clip_texts(tok, captions, context_length):
    ids = torch.zeros((len(captions), context_length), dtype=torch.long)
    for i, c in enumerate(captions):
        t = tok(c)["input_ids"][:context_length - 1] + [tok.eos_token_id]
        ids[i, :len(t)] = torch.tensor(t)
    return ids


def pretrain_vision(tok, processor, stream: SceneStream, steps: int, batch: int = 32, lr: float = 1e-3,
                    clip_weight: float = 0.0, device: str = "cpu", log=print, **tower):
    """Pre-train a tiny open_clip CLIP's image tower on fresh train-bucket pictures.

    Loss: scene-attribute heads on the image embedding (kind / colour per slot, time, ground) plus
    `clip_weight` x the contrastive caption loss (text tower used only when `clip_weight` > 0).
    Returns (clip model, attribute head, report)."""
    clip = openclip_model(len(tok), eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, **tower).to(device)
    head = torch.nn.Linear(clip.visual.output_dim, sum(ATTRIBUTE_SIZES)).to(device)
    ctx = getattr(clip, "context_length", 48)

    def make_batch(step):
        sc = stream.take(batch)
        px = _pixels(processor, [S.render(s, processor.image_processor.crop_size["height"]) for s in sc])
        labels = torch.tensor([scene_attributes(s) for s in sc])
        caps = [S.caption_en(s, stream.rng.randrange(4)) for s in sc] if clip_weight else None
        groups = torch.tensor([hash(s.signature()) for s in sc])       # in-process only: equality
        return px.to(device), labels.to(device), caps, groups.to(device)

    def loss_fn(b):
        px, labels, caps, groups = b
        emb = clip.encode_image(px)
        loss = attribute_loss(head, emb, labels)
        if clip_weight:
            loss = loss + clip_weight * clip_loss(clip, emb, _clip_texts(tok, caps, ctx).to(device), groups)
        return loss

    params = list(clip.visual.parameters()) + list(head.parameters())
    if clip_weight:
        params = list(clip.parameters()) + list(head.parameters())
    clip.train()
    report = _optimise([{"params": params, "lr": lr}], steps, make_batch, loss_fn, log, "vision")
    clip.eval()
    report.update(clip_weight=clip_weight, attribute_accuracy=attribute_accuracy(clip, head, processor, device))
    return clip, head, report


@torch.no_grad()
def attribute_accuracy(clip, head, processor, device="cpu", n: int = 256) -> dict:
    """Accuracy of the attribute heads on fresh pictures (a stream of its own): slot kind, colour, time."""
    sc = SceneStream(random.Random("attribute-accuracy")).take(n)
    px = _pixels(processor, [S.render(s, processor.image_processor.crop_size["height"]) for s in sc]).to(device)
    labels = torch.tensor([scene_attributes(s) for s in sc]).to(device)
    pred = [lg.argmax(-1) for lg in head(clip.encode_image(px)).split(ATTRIBUTE_SIZES, -1)]
    acc = [(p == labels[:, i]).float().mean().item() for i, p in enumerate(pred)]
    return {"slot_kind": round(sum(acc[:3]) / 3, 3), "slot_color": round(sum(acc[3:6]) / 3, 3),
            "time": round(acc[6], 3), "ground": round(acc[7], 3)}


# --------------------------------------------------------------------------- the recipe

def _with_text_loss(model, loss_fn, tok, corpus, batch: int, block: int, seed: int, device: str):
    """`loss_fn` plus, when `batch`, the language model's next-token loss on `batch` random blocks of `corpus`."""
    if not batch:
        return loss_fn
    if not corpus:
        raise ValueError("vlm.text_batch needs a text corpus (the language model's own documents)")
    from .train import pack
    blocks = pack(tok, corpus, block).to(device)
    gen = torch.Generator().manual_seed(seed)

    def fn(b):
        x = blocks[torch.randint(0, len(blocks), (batch,), generator=gen)]
        return loss_fn(b) + model(input_ids=x, labels=x).loss          # text only: no pixel values
    return fn


def train_vlm(tokenizer_dir, base_dir, out_dir, seed: int = 0, vision_steps: int = 1500, stage1_steps: int = 100,
              stage2_steps: int = 700, vision_batch: int = 32, batch_size: int = 32, image_size: int = S.SIZE,
              patch_size: int = 16, width: int = 128, layers: int = 3, heads: int = 4, clip_weight: float = 0.0,
              lr_vision_pretrain: float = 1e-3, lr_projector: float = 1e-3, lr_lm: float = 5e-4,
              lr_vision: float = 1e-4, train_vision: bool = True, ja_question_frac: float = 0.3,
              ja_question_system: str = "ja", caption_frac: float = 0.2, short_answers: bool = False,
              stage1_qa_frac: float = 0.0, stage1_mimic: int = 0, stage1_mimic_weight: float = 1.0,
              stage1_mimic_time: float = 0.0, train_projector_stage2: bool = True,
              lm_params: str = "", text_corpus=None, text_batch: int = 0, text_block: int = 128, micro: int = 2,
              device: str = "cpu", log=print) -> dict:
    """Train `vlm-en` and save it as a Hugging Face folder at `out_dir` (atomically); returns the report.

    The defaults are the world's recipe (about 8 minutes on 2 CPU threads); step counts scale it.
    `lm_params`: a regular expression; when given, stage 2 trains only the language model's parameters
    whose names, as in the base LM's checkpoint (`model.layers.0.mlp.up_proj.weight`, `lm_head.weight`),
    it matches; the rest of the language model stays the base's. `text_batch`: stage 2 also reads on
    `text_batch` blocks of `text_block` tokens of `text_corpus` (documents, text only) per step, next-token
    loss added to the answer loss, as LLaVA's instruction mix carries text-only data: the language
    model keeps its text behaviour (the question's language, look-ups) and learns what images need.
    `stage1_qa_frac`: a share of stage 1's items are English questions with English answers in the chat
    turn instead of plain captions; the language model is frozen there, so the projector learns image
    tokens that the base's own look-up (a description, then a question in either language) can read.
    `stage1_mimic`: stage 1 also adds `stage1_mimic_weight` x `mimic_loss` on that many fresh scenes per
    step (an English question each; `stage1_mimic_time` of them ask the time of day, the rest any question: one
    time question per scene leaves the time to a tenth of the loss). `train_projector_stage2=False` keeps that
    projector through stage 2."""
    from transformers import AutoTokenizer
    if ja_question_system not in ("ja", "en"):
        raise ValueError(f"vlm.ja_question_system must be 'ja' or 'en', got {ja_question_system!r}")
    for key, v in (("stage1_qa_frac", stage1_qa_frac), ("stage1_mimic_time", stage1_mimic_time)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"vlm.{key} must be in [0, 1], got {v!r}")
    t_start = time.time()
    torch.manual_seed(seed)
    rng = random.Random(f"vlm:{seed}")
    stream = SceneStream(rng)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    processor = make_processor(tok, image_size, patch_size)
    report = {"seed": seed, "image_size": image_size, "patch_size": patch_size,
              "vision": {"width": width, "layers": layers, "heads": heads, "train_in_stage2": train_vision},
              "batch_size": batch_size, "ja_question_frac": ja_question_frac,
              "ja_question_system": ja_question_system, "caption_frac": caption_frac,
              "short_answers": short_answers, "lm_params": lm_params, "stage1_qa_frac": stage1_qa_frac,
              "stage1_mimic": stage1_mimic, "stage1_mimic_weight": stage1_mimic_weight,
              "stage1_mimic_time": stage1_mimic_time,
              "train_projector_stage2": train_projector_stage2,
              "text": {"batch": text_batch, "block": text_block, "docs": len(text_corpus or ())},
              "threads": torch.get_num_threads(), "device": device}

    # 0. vision tower (open_clip) pre-training, then conversion to transformers
    clip, head, report["vision_pretrain"] = pretrain_vision(
        tok, processor, stream, vision_steps, vision_batch, lr_vision_pretrain, clip_weight, device, log,
        image_size=image_size, patch_size=patch_size, width=width, layers=layers, heads=heads)
    hf_vision = openclip_to_hf_vision(clip.visual.cpu())

    # 1. assemble, stage 1 (projector on captions), stage 2 (projector + LM + vision on captions and QA)
    model = build_llava(hf_vision, base_dir, tok).to(device)
    batcher = _Batcher(processor)
    report["projector_init"] = init_projector(
        model, _pixels(processor, [S.render(sc, image_size) for sc in stream.take(256)]).to(device))

    def make_batch(stage: int):
        def fn(step):
            items = []
            for sc in stream.take(batch_size):
                if stage == 2:
                    qa = rng.random() >= caption_frac
                else:                                   # no draw unless asked: older builds stay bit for bit
                    qa = bool(stage1_qa_frac) and rng.random() < stage1_qa_frac
                ex = _qa_example(sc, rng, ja_question_frac if stage == 2 else 0.0, short_answers,
                                 ja_question_system) if qa else _caption_example(sc, rng, plain=stage == 1)
                items.append((S.render(sc, image_size), *ex))
            return [{k: v.to(device) for k, v in b.items()} for b in batcher(items, micro)]
        return fn

    m = model.model
    model.train()
    model.requires_grad_(False)
    m.multi_modal_projector.requires_grad_(True)
    stage1_loss = lambda b: answer_loss(model, b)
    if stage1_mimic:
        mrng = random.Random(f"vlm-mimic:{seed}")        # its own scenes: the other batches stay as they were
        mstream = SceneStream(mrng)
        mimic = lambda: mimic_rows(mstream, mrng, stage1_mimic, image_size, short_answers, stage1_mimic_time)
        stage1_loss = lambda b: answer_loss(model, b) + stage1_mimic_weight * mimic_loss(model, batcher, mimic())
    report["stage1"] = _optimise([{"params": list(m.multi_modal_projector.parameters()), "lr": lr_projector}],
                                 stage1_steps, make_batch(1), stage1_loss, log, "stage1")
    model.requires_grad_(True)
    lm = [(f"model.{n}", p) for n, p in m.language_model.named_parameters()] + \
        [(f"lm_head.{n}", p) for n, p in model.lm_head.named_parameters()]
    if lm_params:
        for n, p in lm:
            p.requires_grad_(bool(re.search(lm_params, n)))
        lm = [(n, p) for n, p in lm if p.requires_grad]
        if not lm:
            raise ValueError(f"vlm.lm_params={lm_params!r} matches no language-model parameter")
        report["lm_trained"] = sorted({re.sub(r"\.(weight|bias)$", "", n) for n, _ in lm})
    groups = [{"params": [p for _, p in lm], "lr": lr_lm}]
    if train_projector_stage2:
        groups.insert(0, {"params": list(m.multi_modal_projector.parameters()), "lr": lr_projector})
    else:
        m.multi_modal_projector.requires_grad_(False)
    if train_vision:
        groups.append({"params": list(m.vision_tower.parameters()), "lr": lr_vision})
    else:
        m.vision_tower.requires_grad_(False)
    seen = set()                                    # tied embeddings appear once
    for g in groups:
        g["params"] = [p for p in g["params"] if id(p) not in seen and not seen.add(id(p))]
    report["stage2"] = _optimise(groups, stage2_steps, make_batch(2), _with_text_loss(
        model, lambda b: answer_loss(model, b), tok, text_corpus, text_batch, text_block, seed, device), log, "stage2")
    model.eval()
    report["train_seconds"] = round(time.time() - t_start, 1)
    save_vlm(model.cpu(), processor, out_dir, report)
    return report


def build_vlm_world(out, seed: int = 0, device: str = "cpu", log=print, lm: str = "base", **recipe) -> dict:
    """The world's VLM stage: the VQA data sets under `out/data` and `vlm-en` at `out/models/vlm-en`,
    from `out/tokenizer` and the LM `out/models/<lm>`. `recipe` overrides `train_vlm` / `build_vqa_data` settings."""
    from .vqa_data import build_vqa_data
    out = Path(out)
    data_keys = ("n_fitness", "n_test", "n_wild_images", "n_wild_questions")
    data = build_vqa_data(out / "data", seed=seed, **{k: recipe.pop(k) for k in data_keys if k in recipe})
    report = train_vlm(out / "tokenizer", out / "models" / lm, out / "models" / "vlm-en", seed=seed,
                       device=device, log=log, **recipe)
    return {"data": {k: str(v) for k, v in data.items()}, "vlm": report}


def save_vlm(model, processor, out_dir, report: dict | None = None) -> Path:
    """Write model (safetensors, bfloat16 like the world's other models: assets/ stays small; evaluation
    computes in float32) + processor + tokenizer to `out_dir` via a temporary folder and a rename."""
    from evollm.checkpoint import AtomicFolder
    with AtomicFolder(out_dir, force=True) as tmp:
        model.to(torch.bfloat16).save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if report is not None:
            (tmp / "world_vlm.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return Path(out_dir)


# --------------------------------------------------------------------------- evaluation

def evaluate_vqa(model_or_dir, processor, dataset, max_new_tokens: int = 64, batch_size: int = 16,
                 protocol=None, seed: int = 0, device: str = "cpu", shuffle_images: bool = False,
                 **generation) -> dict:
    """Predictions and scores on a JA-VG-VQA (`qas[0]`) or In-the-Wild data set, asked as `protocol` says
    (default: the world's); `rouge_l` is ROUGE-L with the language rule (x100, bootstrap mid), `items`
    its per-item values, `scores` every official number. `shuffle_images`: every question asked about
    another item's image (evovlm.tasks.shuffle_images, seeded by `seed`)."""
    import numpy as np

    from evovlm.data import qa_items

    from evovlm.infer import generate_answers, load_vlm
    from evollm.protocols import ja_vqa
    from .formats import WORLD_VQA
    if isinstance(model_or_dir, (str, Path)):
        model, loaded = load_vlm(model_or_dir, device)
        processor = processor or loaded
    else:
        model = model_or_dir
    was_training = model.training
    model.eval()
    items = qa_items(dataset)
    if shuffle_images:
        from evovlm.tasks import shuffle_images as shuffle
        items = shuffle(items, seed)
    preds = generate_answers(model, processor, [x["image"] for x in items], [x["question"] for x in items],
                             protocol or WORLD_VQA, max_new_tokens=max_new_tokens, batch_size=batch_size, **generation)
    model.train(was_training)
    refs = [x["answer"] for x in items]
    scores = ja_vqa.score(preds, refs, seed)
    per_item = ja_vqa.item_scores(ja_vqa.language_rule(preds, refs), refs)["rougeL"][:, 2]
    return {"rouge_l": scores["rougeL_ja"], "scores": scores, "items": [100.0 * float(x) for x in np.asarray(per_item)],
            "predictions": preds, "references": refs, "questions": [x["question"] for x in items]}
