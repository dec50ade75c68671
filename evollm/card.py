"""Model cards: the `README.md` every exported model carries, in the form the Hugging Face Hub reads.

A card is YAML front matter (`base_model`: every source, `tags`, `library_name`, `license`,
`pipeline_tag`) and a Markdown body: what was merged, the recipe, and for an evolved model the search
and the run's table (for DFS, the layer path). One function writes it (`write_card`), called by every
export: `evollm merge --recipe` and `evovlm merge --recipe` (engine/disk.py, evovlm/export.py) and a
run's `best/model/` (search/run.py, once after the export and again with the report's table).

Nothing in a card, nor in a run's `best/recipe.yaml`, names a path of the machine that made it
(`portable`): a hub id stays an id, a local folder is written by its name (a run's label for it).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml

from .fsutil import write_atomic
from .recipe import OutputSlice, Recipe, Source

TAGS = ["merge", "evolutionary-model-merge", "evollm"]
#: license written when none is given: the Hub's value for "see the card"; the body says to check the sources
UNKNOWN_LICENSE = "other"


def portable(ref, names: dict = None):
    """How a card or an exported recipe names a model: a hub id as given; a local folder by its label in
    `names` (ref -> label, a run's `models[].name`), else by the folder's own name."""
    if ref is None:
        return None
    from .hub import is_hub_id
    ref = str(ref)
    p = Path(ref).expanduser()
    if not p.exists() and is_hub_id(ref):
        return ref
    if names and ref in names:
        return names[ref]
    return p.name or p.resolve().name


def portable_recipe(recipe: Recipe, names: dict = None) -> Recipe:
    """The recipe with every model reference made `portable`."""
    def src(s: Source) -> Source:
        return dataclasses.replace(s, model=portable(s.model, names))
    slices = None if recipe.slices is None else [
        OutputSlice([src(s) for s in sl.sources], portable(sl.base_model, names), sl.parameters) for sl in recipe.slices]
    tok = recipe.tokenizer_source
    return dataclasses.replace(
        recipe, base_model=portable(recipe.base_model, names), slices=slices,
        models=None if recipe.models is None else [src(s) for s in recipe.models],
        tokenizer_source=tok if tok in (None, "base", "union") else portable(tok, names))


def is_vlm_folder(folder) -> bool:
    """Whether a checkpoint folder holds a VLM (a config with a vision and a text config)."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return "vision_config" in cfg and "text_config" in cfg


def card_text(title: str, sources, recipe_yaml: str, *, license: str = None, method: str = None,
              vlm: str = None, search: list = None, table: str = None, path=None, recipe_name: str = "recipe") -> str:
    """The card. `sources`: the models merged (portable refs, base first); `vlm`: the sentence saying which
    tower was merged (None for a causal LM); `search`: lines describing how the recipe was evolved;
    `table`: the run's report table; `path`: a DFS path [[model, layer, scale], ...]."""
    meta = {"base_model": list(dict.fromkeys(s for s in sources if s)),
            "tags": TAGS + ([method] if method else []) + (["vlm"] if vlm else []),
            "library_name": "transformers",
            "license": license or UNKNOWN_LICENSE}
    if not license:
        meta["license_name"] = "unknown"
    meta["pipeline_tag"] = "image-text-to-text" if vlm else "text-generation"
    evolved = search is not None
    made = "evolved with evollm (an evolutionary search over merge recipes)" if evolved else "merged with evollm"
    body = [f"# {title}", "",
            f"This model was {made} from: " + ", ".join(f"`{s}`" for s in meta["base_model"]) + ".", ""]
    if vlm:
        body += [vlm, ""]
    if not license:
        body += ["License: none was given when it was made; it is bound by the licenses of the models above.", ""]
    if evolved:
        body += ["## Search", "", *search, ""]
    if path:
        body += ["## Layer path (data-flow space)", "", "| hop | model | layer | input scale |", "|---:|---|---:|---:|",
                 *[f"| {k} | {m} | {i} | {s:.3f} |" for k, (m, i, s) in enumerate(path)], ""]
    body += [f"## Merge {recipe_name}", "", "```yaml", recipe_yaml.rstrip(), "```", ""]
    if table:
        body += ["## Results", "", table, ""]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(body)


def recipe_card(recipe: Recipe, folder, license: str = None, vlm_note: str = None) -> str:
    """The card of a plain merge (`merge --recipe`): its sources, method and recipe."""
    p = portable_recipe(recipe)
    title = Path(folder).name
    return card_text(title, p.model_refs(), p.to_yaml(), license=license, method=recipe.merge_method, vlm=vlm_note)


def write_card(folder, text: str) -> Path:
    """`folder`/README.md, atomically."""
    out = Path(folder) / "README.md"
    write_atomic(out, text)
    return out


def front_matter(text: str) -> dict:
    """A card's metadata (its YAML front matter), as the Hub reads it; an error if it has none."""
    if not text.startswith("---\n") or "\n---\n" not in text[3:]:
        raise ValueError("a model card starts with YAML front matter between two `---` lines")
    return yaml.safe_load(text[4:text.index("\n---\n", 3)])
