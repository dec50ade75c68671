"""lm-eval's loader of the world's local tasks (`custom_dataset: !function world.jcqa` in world_jcqa.yaml)."""

import datasets

from evollm.checkout import checkout_file


def jcqa(**_):
    """train (few-shot examples) and validation (scored) of assets/data/jcqa-world/."""
    folder = checkout_file("assets", "data", "jcqa-world", what="the world's general-ability data")
    return datasets.load_dataset("json", data_files={s: str(folder / f"{s}.jsonl") for s in ("train", "validation")})
