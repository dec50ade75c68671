"""`evovlm merge --config`: evollm's run (search, run folder, resume, report) over a VLM.

The candidate model is the VLM itself; merges write only its language tower (under causal-LM names,
the vocabulary tensors through views of the rows the causal LMs share), so vision tower, projector and
the VLM's added vocabulary rows never change. Export goes through `evovlm merge --recipe`'s engine.
"""

from __future__ import annotations

import torch

from evollm.checkpoint import Checkpoint
from evollm.hub import load_causal_lm, resolve_model
from evollm.search.dfs_space import DfsWorkbench
from evollm.search.workbench import PsWorkbench, read_state

from .export import merge_vlm
from .infer import load_vlm
from .model import VOCAB_TENSORS, TowerView, is_vlm, lm_name, text_vocab


def tower_targets(vlm, rows: int) -> dict:
    """What a merge writes in a loaded VLM: its language-tower parameters under causal-LM names, the
    vocabulary tensors as views of their first `rows` rows (the rows the causal LMs share)."""
    targets = {}
    for k, p in vlm.named_parameters():
        name = lm_name(k)
        if name is not None:
            targets[name] = p[:rows] if name in VOCAB_TENSORS else p
    return targets


class VlmWorkbench(PsWorkbench):
    """Parameter space over the VLM's language tower."""

    def build(self, cfg: dict, dtype):
        ckpts = {m.model: Checkpoint(resolve_model(m.model), name=m.model) for m in cfg.models}
        vlms = [r for r, c in ckpts.items() if is_vlm(c)]
        if len(vlms) != 1:
            raise ValueError(f"config `models`: evovlm needs exactly one LLaVA-style VLM among the models, found "
                             f"{vlms or 'none'}")
        self.vlm_ref = vlms[0]
        base = Checkpoint(resolve_model(cfg.base_model), name=cfg.base_model)
        self.rows = text_vocab(base.config)
        model, processor = load_vlm(resolve_model(self.vlm_ref), cfg.device, dtype)
        return model, processor, tower_targets(model, self.rows)

    def reference_models(self) -> dict:
        """As for causal LMs; a causal LM's row (the base, a text source) is the VLM with it as the language
        tower, and says so."""
        lms = {"base"} | {m.name for m in self.cfg.models if m.model != self.vlm_ref}
        return {f"{k} as the language tower" if k in lms else k: v for k, v in super().reference_models().items()}

    def read_source(self, ref: str) -> dict:
        ck = Checkpoint(resolve_model(ref), name=ref)
        return read_state(ref, self.shapes, TowerView(ck, self.rows) if is_vlm(ck) else ck)

    def export(self, recipe, out_dir):
        merge_vlm(recipe, out_dir, device=self.device, seed=self.seed, log=lambda *a: None)


def build_vlm_dfs(vlm, lm_b, hops):
    """The VLM with a DFS path as its language tower: A = the VLM's tower (embeddings, norm, head,
    vision tower and projector from the VLM), B = a causal LM; layers shared, one cache slot per hop."""
    import copy

    from evollm.dfs import check_materialised, hop_layers, path_config
    tower = vlm.model.language_model
    cfg = copy.deepcopy(vlm.config)
    cfg.text_config = path_config(vlm.config.text_config, (tower.layers, lm_b.model.layers), hops)
    with torch.device("meta"):
        out = type(vlm)(cfg)
    for name, module in vlm.model.named_children():
        if name != "language_model":
            setattr(out.model, name, module)                 # vision tower, projector
    for name, p in vlm.model.named_parameters(recurse=False):
        setattr(out.model, name, p)                          # LlavaNext's image_newline
    lm = out.model.language_model
    lm.layers = hop_layers(tower.layers, lm_b.model.layers, hops)
    lm.embed_tokens, lm.norm, lm.rotary_emb = tower.embed_tokens, tower.norm, tower.rotary_emb
    out.lm_head = vlm.lm_head
    out.generation_config = copy.deepcopy(vlm.generation_config)
    return check_materialised(out).eval()


def save_vlm_dfs(vlm, lm_b, hops, out_dir, processor=None):
    """The VLM DFS model as a plain VLM checkpoint of the source's class (scales folded as in
    evollm.dfs.export_state)."""
    import copy

    from evollm.checkpoint import AtomicFolder
    from evollm.dfs import export_state
    from .model import LanguageTower
    tower_state, text_cfg = export_state(LanguageTower(vlm), lm_b, hops)
    cfg = copy.deepcopy(vlm.config)
    cfg.text_config = text_cfg
    state = {k: v for k, v in vlm.state_dict().items() if lm_name(k) is None}
    for k, v in tower_state.items():
        state[("model.language_model." + k[len("model."):]) if k.startswith("model.") else k] = v
    with torch.device("meta"):
        plain = type(vlm)(cfg)
    plain.load_state_dict(state, assign=True, strict=True)
    with AtomicFolder(out_dir) as tmp:
        plain.save_pretrained(tmp)
        if processor is not None:
            processor.save_pretrained(tmp)
    return out_dir


class VlmDfsWorkbench(DfsWorkbench):
    """DFS over the VLM's language tower (A: it also keeps its vision tower, projector, embeddings and
    head) and a causal LM (B)."""
    passthrough = False

    def load_models(self, refs, dtype):
        path_a = resolve_model(refs[self.a])
        if not is_vlm(Checkpoint(path_a)):
            raise ValueError(f"search.dfs.a: evovlm's DFS takes the VLM as A; {refs[self.a]} is not one")
        a, processor = load_vlm(path_a, self.device, dtype)
        b = load_causal_lm(refs[self.b], dtype, self.device)
        return {self.a: a, self.b: b}, processor, (a.model.language_model.layers, b.model.layers)

    def candidate(self, params):
        return build_vlm_dfs(self.models[self.a], self.models[self.b], self.space.hops_of(params))

    def save(self, hops, folder):
        save_vlm_dfs(self.models[self.a], self.models[self.b], hops, folder, self.processor)

    def b_label(self) -> str:
        return f"{self.b}'s layers as the language tower"

    def b_alone(self):
        """B is a causal LM: as a VLM row, its layers inside A (A's embeddings, head, vision side)."""
        return self.candidate({"path": [[self.b, i, 1.0] for i in range(self.n_layers)]})

    def load_exported(self, path):
        return load_vlm(path, self.device, self.dtype)[0]
