"""`evovlm merge --config` on the miniature world's VLM: the same run folder as evollm, and the
exported VLM is what the search scored, with vision tower and projector untouched."""


import torch
import pytest
from safetensors.torch import load_file

from evollm.search.run import read_candidates, run
from helpers import ASSETS, small
from evovlm.model import tower_names
from evovlm.tasks import load_vqa



def test_vqa_rows_load_from_either_benchmark_format():
    vg = load_vqa(str(ASSETS / "data" / "ja-vg-vqa-500" / "test.parquet"))
    wild = load_vqa(str(ASSETS / "data" / "ja-vlm-bench-in-the-wild" / "test.parquet"))
    for rows in (vg, wild):
        assert rows and set(rows[0]) == {"image", "question", "answer"} and rows[0]["answer"]


@pytest.mark.slow
def test_short_vlm_run(tmp_path, monkeypatch):
    import evovlm.search as VS
    cfg = small(tmp_path, "world-vqa", budget=4, max_new_tokens=12, report={"sources": True, "baselines": False})
    loads, load = [], VS.VlmWorkbench.load_exported
    monkeypatch.setattr(VS.VlmWorkbench, "load_exported", lambda self, p: loads.append(p) or load(self, p))
    data = run(cfg, tmp_path / "run", progress=False, log=lambda *a: None)
    assert len(loads) == 1               # the evolved row and its "images shuffled" control share one load
    recs = read_candidates(tmp_path / "run" / "candidates.jsonl")
    assert len(recs) == 4 and all(r["error"] is None for r in recs)
    assert data["rows"]["evolved (best/model)"]["fitness"]["score"] == max(r["score"] for r in recs)
    assert {"vlm-en", "ja as the language tower", "base as the language tower",
            "images shuffled (evolved)"} <= set(data["rows"]) and data["task"] == "ja-vqa"
    src = load_file(str(ASSETS / "models" / "vlm-en" / "model.safetensors"))
    out = load_file(str(tmp_path / "run" / "best" / "model" / "model.safetensors"))
    tower = set(tower_names(src).values())
    assert set(src) == set(out)
    assert all(torch.equal(src[k], out[k]) for k in src if k not in tower)
    assert sum(not torch.equal(src[k].float(), out[k].float()) for k in tower) > len(tower) // 2
    assert "ROUGE-L" in (tmp_path / "run" / "report.md").read_text()


def test_images_shuffled_gives_every_item_another_items_image():
    from evovlm.tasks import shuffle_images
    rows = load_vqa(str(ASSETS / "data" / "ja-vg-vqa-500" / "test.parquet"))[:9]
    out = shuffle_images(rows, 0)
    assert [r["question"] for r in out] == [r["question"] for r in rows]
    assert all(o["image"] is not r["image"] for o, r in zip(out, rows))
    assert sorted(map(id, (o["image"] for o in out))) == sorted(map(id, (r["image"] for r in rows)))
    assert [id(o["image"]) for o in shuffle_images(rows, 0)] == [id(o["image"]) for o in out]
    assert [id(o["image"]) for o in shuffle_images(rows, 1)] != [id(o["image"]) for o in out]


def test_vqa_loaders_read_jsonl_and_imagefolder_copies(tmp_path):
    import json

    import pytest
    from PIL import Image
    rows = load_vqa(str(ASSETS / "data" / "ja-vlm-bench-in-the-wild" / "test.parquet"))[:3]
    (tmp_path / "imgs").mkdir()
    lines, meta = [], []
    for i, r in enumerate(rows):
        r["image"].convert("RGB").save(tmp_path / "imgs" / f"{i}.png")
        lines.append({"image": f"imgs/{i}.png", "question": r["question"], "answer": r["answer"]})
        meta.append({"file_name": f"{i}.png", "qas": [{"question": r["question"], "answer": r["answer"]}]})
    (tmp_path / "wild.jsonl").write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines))
    got = load_vqa(str(tmp_path / "wild.jsonl"))
    assert [g["answer"] for g in got] == [r["answer"] for r in rows]
    assert got[0]["image"].size == rows[0]["image"].size
    (tmp_path / "imgs" / "metadata.jsonl").write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in meta))
    got = load_vqa(str(tmp_path / "imgs"))
    assert sorted(g["question"] for g in got) == sorted(r["question"] for r in rows)
    assert isinstance(got[0]["image"], Image.Image)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "nope.png", "question": "q", "answer": "a"}))
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_vqa(str(tmp_path / "bad.jsonl"))


@pytest.mark.slow
def test_short_vlm_dfs_run(tmp_path):
    cfg = small(tmp_path, "world-vqa-dfs", budget=4, max_new_tokens=12)
    data = run(cfg, tmp_path / "run", progress=False, log=lambda *a: None)
    recs = read_candidates(tmp_path / "run" / "candidates.jsonl")
    assert len(recs) == 4 and all(r["error"] is None for r in recs)
    from transformers import AutoConfig
    best = max(recs, key=lambda r: r["score"])
    cfg_out = AutoConfig.from_pretrained(tmp_path / "run" / "best" / "model")
    assert cfg_out.text_config.num_hidden_layers == len(best["parameters"]["path"])
    assert "vlm-en" in data["rows"] and (tmp_path / "run" / "path.png").exists()
    assert not (tmp_path / "run" / "best" / "mergekit_config.yml").exists()
    card = (tmp_path / "run" / "best" / "model" / "README.md").read_text()     # the card says which tower changed
    assert "language tower only, replaced by the evolved layer path" in card and "image-text-to-text" in card
