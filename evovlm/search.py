"""`evovlm merge --config`: evollm's run (search, run folder, resume, report) over a VLM.

The candidate model is the VLM itself; merges write only its language tower (under causal-LM names,
the vocabulary tensors through views of the rows the causal LMs share), so vision tower, projector and
the VLM's added vocabulary rows never change. Export goes through `evovlm merge --recipe`'s engine.
"""

from __future__ import annotations

from evollm.checkpoint import Checkpoint
from evollm.hub import resolve_model
from evollm.search.evaluate import Workbench, read_state

from .merge import merge_vlm
from .model import VOCAB_TENSORS, TowerView, is_vlm, lm_name, text_vocab


class VlmWorkbench(Workbench):
    def build(self, cfg: dict, dtype):
        from transformers import AutoModelForImageTextToText, AutoProcessor
        ckpts = {m["model"]: Checkpoint(resolve_model(m["model"]), name=m["model"]) for m in cfg["models"]}
        vlms = [r for r, c in ckpts.items() if is_vlm(c)]
        if len(vlms) != 1:
            raise ValueError(f"config `models`: evovlm needs exactly one LLaVA-style VLM among the models, found "
                             f"{vlms or 'none'}")
        self.vlm_ref = vlms[0]
        base = Checkpoint(resolve_model(cfg["base_model"]), name=cfg["base_model"])
        self.rows = text_vocab(base.config)
        path = resolve_model(self.vlm_ref)
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype).to(cfg["device"]).eval()
        processor = AutoProcessor.from_pretrained(path)
        processor.tokenizer.padding_side = "left"
        targets = {}
        for k, p in model.named_parameters():
            name = lm_name(k)
            if name is not None:
                targets[name] = p[:self.rows] if name in VOCAB_TENSORS else p
        return model, processor, targets

    def read_source(self, ref: str) -> dict:
        ck = Checkpoint(resolve_model(ref), name=ref)
        return read_state(ref, self.shapes, TowerView(ck, self.rows) if is_vlm(ck) else ck)

    def read_exported(self, path) -> dict:
        return self.read_source(str(path))

    def export(self, recipe, out_dir):
        merge_vlm(recipe, out_dir, device=self.device, seed=self.seed, log=lambda *a: None)
