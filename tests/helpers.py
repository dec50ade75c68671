"""Shared test helpers: the repository's paths; tiny random causal LMs fine-tuned from one base (by
seeded noise), built on the fly; shipped run configs made small for tests."""

import json
from pathlib import Path

import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
CONFIGS = ROOT / "configs"

ARCHS = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM)}


def tiny_config(arch="llama", **over):
    kw = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              tie_word_embeddings=False)
    kw.update(over)
    return ARCHS[arch][0](**kw)


def save_model(path, arch="llama", seed=0, noise=0.0, base_state=None, dtype=torch.float32, **over):
    cfg = tiny_config(arch, **over)
    torch.manual_seed(seed)
    model = ARCHS[arch][1](cfg)
    if base_state is not None:
        model.load_state_dict(base_state)
    if noise:
        g = torch.Generator().manual_seed(seed + 1000)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * noise)
    model.to(dtype).save_pretrained(path)
    return model.state_dict()


def family(root, arch="llama", n=2, dtype=torch.float32, **over):
    """root/base and root/ft0..ft{n-1}; returns their paths as strings."""
    base = save_model(root / "base", arch, seed=0, dtype=dtype, **over)
    paths = [str(root / "base")]
    for i in range(n):
        save_model(root / f"ft{i}", arch, seed=i + 1, noise=0.05, base_state=base, dtype=dtype, **over)
        paths.append(str(root / f"ft{i}"))
    (root / "base" / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    return paths


# -- run configs
def absolute(d: dict) -> dict:
    """A config's paths (relative to configs/) made absolute, so it can be written anywhere."""
    d["base_model"] = str((CONFIGS / d["base_model"]).resolve())
    d["models"] = [str((CONFIGS / m).resolve()) for m in d["models"]]
    for s in ("fitness", "test"):
        d["task"][s]["data"] = str((CONFIGS / d["task"][s]["data"]).resolve())
    return d


def small(tmp_path, name: str, budget=8, popsize=4, items=6, max_new_tokens=24, report=None) -> dict:
    """configs/NAME.yaml with a short search on a few items, written to tmp_path/RUN.yaml and loaded."""
    from evollm.search.config import load_config
    d = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    d["search"].update(budget=budget, popsize=popsize)
    d["task"].update(max_new_tokens=max_new_tokens)
    d["task"]["fitness"]["limit"] = d["task"]["test"]["limit"] = items
    if report is not None:
        d["report"] = report
    (tmp_path / "RUN.yaml").write_text(yaml.safe_dump(absolute(d)))
    return load_config(tmp_path / "RUN.yaml")
