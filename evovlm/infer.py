"""VQA inference: a LLaVA-style VLM loaded for generation, and its batched answers under a protocol."""

from __future__ import annotations

import torch

from evollm.generate import batches, count_generated


def load_vlm(model_dir, device: str = "cpu", dtype=torch.float32):
    """(model, processor) from a saved VLM folder (the class its config names), the model in `dtype` on
    `device`, the processor padding on the left (for batched generation)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    processor.tokenizer.padding_side = "left"
    return model, processor


@torch.no_grad()
def generate_answers(model, processor, images, questions, protocol, *, batch_size: int = None,
                     progress: bool = False, **generation) -> list[str]:
    """Answers of a LLaVA-style VLM to `questions` about `images`, asked and decoded as `protocol` says
    (an `evollm.protocols.ja_vqa.VqaProtocol`): its prompt, its generation settings (beam search when
    num_beams > 1; `generation` overrides where not None), batches with left padding, special tokens
    dropped, spaces not cleaned up, stripped. The model computes in whatever dtype it was loaded in."""
    from evollm.protocols.ja_vqa import DECODE
    tok = processor.tokenizer
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    gen = {**protocol.generation, **{k: v for k, v in generation.items() if v is not None}}
    batch_size = batch_size or protocol.batch_size
    out = []
    for i in batches(len(questions), batch_size, progress):
        prompts = [protocol.prompt(q) for q in questions[i:i + batch_size]]
        imgs = [im.convert("RGB") for im in images[i:i + batch_size]]
        enc = processor(images=imgs, text=prompts, padding=True, padding_side="left", return_tensors="pt").to(device)
        if "pixel_values" in enc:
            enc["pixel_values"] = enc["pixel_values"].to(dtype)
        ids = model.generate(**enc, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             **gen)
        new = ids[:, enc["input_ids"].shape[1]:]
        count_generated(new, tok.pad_token_id)
        out += [t.strip() for t in tok.batch_decode(new, **DECODE)]
    return out
