"""Every bad input gets one error line (a ValueError / OSError) that names the file, field, tensor or
model at fault: task data, --limit, checkpoints, tokenizers, and a VLM given where a causal LM is
expected (and back)."""

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from evollm import datafiles
from evollm.checkpoint import Checkpoint, CheckpointError, check_model_folder
from evollm.cli import main as evollm_main
from evollm.hub import load_tokenizer, resolve_model
from evollm.engine.disk import check_device
from evollm.tasks import mgsm
from evovlm.cli import main as evovlm_main
from evovlm.data import load_ja_vg_vqa
from evovlm.tasks import load_vqa
from helpers import save_model

ROW = {"question": "りんごが3個あります。", "answer_number": 3}


def lines(*rows) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows)


# --------------------------------------------------------------------------- task data (ja-math)

@pytest.mark.parametrize("name,content,message", [
    ("empty.jsonl", b"", r"empty\.jsonl: the file is empty"),
    ("blank.jsonl", b"\n   \n\n", r"blank\.jsonl: the file is empty"),
    ("empty.tsv", b"", r"empty\.tsv: the file is empty"),
    ("empty.csv", b"\n", r"empty\.csv: the file is empty"),
    ("head.tsv", b"question\tanswer_number\n", r"head\.tsv: has no rows"),
    ("list.json", b"[]", r"list\.json: has no rows"),
    ("bad.jsonl", lines(ROW, '{"question": "q", answer_number: 1}').encode(),
     r"bad\.jsonl: line 2 is not valid JSON"),
    ("latin.jsonl", lines(ROW).encode() + b'\n{"question": "caf\xe9", "answer_number": 1}',
     r"latin\.jsonl: line 2 is not UTF-8 text"),
    ("array.jsonl", lines([1, 2], ROW).encode(), r"array\.jsonl: line 1 is not a JSON object"),
    ("text.jsonl", lines(ROW, {"question": "q", "answer_number": "three"}).encode(),
     r"text\.jsonl: row 2: answer_number 'three' is not a number"),
    ("nan.jsonl", lines(ROW, '{"question": "q", "answer_number": NaN}').encode(),
     r"nan\.jsonl: row 2: answer_number nan is not a finite number"),
    ("null.jsonl", lines({"question": "q", "answer_number": None}).encode(), r"null\.jsonl: row 1: answer_number None"),
    ("noq.jsonl", lines({"question": "", "answer_number": 1}).encode(),
     r"noq\.jsonl: row 1: question must be non-empty"),
    ("cols.jsonl", lines({"q": "x", "a": 1}).encode(), r"cols\.jsonl: missing column\(s\)"),
    ("inf.tsv", "q\t1e999\n".encode(), r"inf\.tsv: line 1: answer_number '1e999' is not a finite number"),
])
def test_bad_ja_math_data_names_the_file(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        mgsm.load_rows(str(tmp_path / name))


def test_bad_parquet_names_the_file(tmp_path):
    import datasets
    datasets.Dataset.from_dict({"question": ["a"], "answer_number": [1]}).select([]).to_parquet(tmp_path / "e.parquet")
    with pytest.raises(ValueError, match=r"e\.parquet: has no rows"):
        mgsm.load_mgsm(str(tmp_path / "e.parquet"))
    (tmp_path / "x.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=r"x\.parquet: not a readable parquet file \(ArrowInvalid"):
        mgsm.load_mgsm(str(tmp_path / "x.parquet"))


def test_folder_unreadable_or_missing_data_file(tmp_path, monkeypatch):
    (tmp_path / "d.jsonl").mkdir()
    with pytest.raises(IsADirectoryError, match=r"d\.jsonl: is a folder, expected a file"):
        mgsm.load_mgsm(str(tmp_path / "d.jsonl"))
    (tmp_path / "ok.jsonl").write_text(lines(ROW))

    def denied(path, *a, **k):       # tests run as root, where chmod 000 would not stop a read
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(datafiles, "open", denied, raising=False)
    with pytest.raises(PermissionError, match=r"ok\.jsonl: cannot read it \(Permission denied\)"):
        mgsm.load_mgsm(str(tmp_path / "ok.jsonl"))


def test_numbers_as_text_are_read_and_limits_checked(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(lines({"question": "a", "answer_number": "1,200"}, {"question": "b", "answer_number": 2.0}))
    assert [r["answer_number"] for r in mgsm.load_rows(str(p), limit=10)] == [1200, 2]   # limit > rows: fine
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"limit must be >= 1, got {bad}"):
            mgsm.load_rows(str(p), limit=bad)


def test_hub_like_reference_that_is_a_mistyped_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(CheckpointError, match=r"model models/bse: no such folder \(in "):
        resolve_model("models/bse")                # `models/` is here: a typo, not a hub id
    (tmp_path / "data").mkdir()
    with pytest.raises(FileNotFoundError, match=r"data/tset: no such data file"):
        mgsm.load_mgsm("data/tset")
    with pytest.raises(ValueError, match=r"org/none: not a local file, and loading it from the Hugging Face hub"):
        mgsm.load_mgsm("org/none")               # offline (conftest): the hub error is one line naming it


# --------------------------------------------------------------------------- VQA data

@pytest.fixture
def png(tmp_path):
    from PIL import Image
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "a.png")
    return "a.png"


@pytest.mark.parametrize("content,message", [
    ("", r"VQA data: .*v\.jsonl: the file is empty"),
    (lines({"image": "a.png", "q": "x"}), r"v\.jsonl lacks column\(s\) \['question', 'answer'\]"),
    (lines({"image": "a.png", "question": "q", "answer": "a"},
           {"image": "nope.png", "question": "q", "answer": "a"}),
     r"v\.jsonl: row 2: image file .*nope\.png not found"),
    (lines({"image": 3, "question": "q", "answer": "a"}),
     r"v\.jsonl: row 1: column 'image' must hold an image file path"),
    (lines({"image": "a.png", "question": "q", "answer": None}), r"v\.jsonl: row 1: question and answer must be text"),
    (lines({"image": "a.png", "question": "q", "answer": "a"}, "{oops"), r"v\.jsonl: line 2 is not valid JSON"),
    (lines({"image": "a.png", "qas": []}), r"v\.jsonl: row 1: column 'qas' needs a first entry"),
])
def test_bad_vqa_jsonl_names_the_file_and_row(tmp_path, png, content, message):
    (tmp_path / "v.jsonl").write_text(content)
    with pytest.raises((ValueError, OSError), match=message):
        load_vqa(str(tmp_path / "v.jsonl"))


def test_bad_vqa_parquet_and_images(tmp_path, png):
    import datasets
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "v.jsonl").write_text(lines({"image": "broken.png", "question": "q", "answer": "a"}))
    with pytest.raises((ValueError, OSError), match=r"v\.jsonl: row 1: cannot read it \(UnidentifiedImageError"):
        load_vqa(str(tmp_path / "v.jsonl"))
    (tmp_path / "vg").mkdir()
    ds = datasets.Dataset.from_dict({"image": ["x"], "qas": [[{"question": "q", "answer": "a"}]]})
    ds.select([]).to_parquet(tmp_path / "vg" / "test.parquet")
    with pytest.raises(ValueError, match=r"JA-VG-VQA: .*test\.parquet: has no rows"):
        load_ja_vg_vqa(str(tmp_path / "vg"))
    with pytest.raises(ValueError, match=r"VQA data: org/none: not a local file, and loading it from the Hugging"):
        load_vqa("org/none")


# --------------------------------------------------------------------------- checkpoints

def raw_safetensors(path, header, data=b""):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


W = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}


@pytest.mark.parametrize("header,data,message", [
    ([1, 2], b"", r"model\.safetensors: corrupt safetensors header \(a JSON list, not an object\)"),
    ({"w": {"dtype": "F32", "shape": [4]}}, b"\0" * 16, r"model\.safetensors: tensor w: header entry needs dtype, "
     r"shape and data_offsets"),
    ({"w": dict(W, data_offsets=[0, 64])}, b"\0" * 16, r"model\.safetensors: truncated at tensor w"),
    ({"w": dict(W, data_offsets=[0, 12])}, b"\0" * 16, r"tensor w: 12 bytes of data for dtype F32 and shape \[4\]"),
    ({"w": dict(W, shape="4")}, b"\0" * 16, r"tensor w: bad shape '4'"),
    ({"w": W}, b"", r"model\.safetensors: truncated at tensor w"),                     # cut after the header
])
def test_bad_safetensors_header_names_file_and_tensor(tmp_path, header, data, message):
    raw_safetensors(tmp_path / "model.safetensors", header, data)
    with pytest.raises(CheckpointError, match=message):
        Checkpoint(tmp_path)


def test_safetensors_cut_inside_its_header(tmp_path):
    raw_safetensors(tmp_path / "model.safetensors", {"w": W}, b"\0" * 16)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:20])
    with pytest.raises(CheckpointError, match=r"safetensors: corrupt safetensors header \(the file ends inside it"):
        Checkpoint(tmp_path)


@pytest.mark.parametrize("config,message", [
    ("{'model_type': 'llama'}", r"m: .*config\.json: invalid JSON \(line 1, column 2"),
    ("[1, 2]", r"config\.json: expected a JSON object, got a list"),
])
def test_bad_config_json_names_the_file(tmp_path, config, message):
    save_file({"w": torch.ones(4)}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match=message):
        Checkpoint(tmp_path, name="m")


@pytest.mark.parametrize("index,message", [
    ("{not json", r"model\.safetensors\.index\.json: invalid JSON"),
    ('{"metadata": {}}', r"model\.safetensors\.index\.json has no weight_map"),
    ('{"weight_map": {"w": 3}}', r"model\.safetensors\.index\.json has no weight_map"),
])
def test_bad_shard_index_names_the_file(tmp_path, index, message):
    save_file({"w": torch.ones(4)}, tmp_path / "model-00001-of-00001.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(index)
    with pytest.raises(CheckpointError, match=message):
        Checkpoint(tmp_path)


def test_check_model_folder(tmp_path):
    save_model(tmp_path / "lm")
    cfg = check_model_folder(tmp_path / "lm", "lm")
    assert cfg["model_type"] == "llama"
    (tmp_path / "lm" / "config.json").write_text(json.dumps(dict(cfg, model_type="nonesuch")))
    with pytest.raises(CheckpointError, match=r"model lm: model_type 'nonesuch' .* is not a causal LM architecture"):
        check_model_folder(tmp_path / "lm", "lm")
    (tmp_path / "lm" / "config.json").write_text(json.dumps({"architectures": ["X"]}))
    with pytest.raises(CheckpointError, match=r"model lm: .*config\.json has no model_type"):
        check_model_folder(tmp_path / "lm", "lm")
    (tmp_path / "lm" / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"model lm: no config\.json in"):
        check_model_folder(tmp_path / "lm", "lm")


def test_tokenizer_that_cannot_load_is_named(tmp_path):
    save_model(tmp_path / "lm")
    with pytest.raises(CheckpointError, match=r"tokenizer .*lm: no tokenizer files"):
        load_tokenizer(str(tmp_path / "lm"))
    (tmp_path / "lm" / "tokenizer.json").write_text("{broken")
    with pytest.raises(CheckpointError, match=r"tokenizer .*lm: transformers cannot load it from .*\(\w+"):
        load_tokenizer(str(tmp_path / "lm"))


# --------------------------------------------------------------------------- models of the wrong kind, CLIs

@pytest.fixture(scope="module")
def vlm_and_lm(tmp_path_factory):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    root = tmp_path_factory.mktemp("models")
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=16, patch_size=8)
    text = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2)
    LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_index=95)) \
        .save_pretrained(root / "vlm")
    save_model(root / "lm")
    return str(root / "vlm"), str(root / "lm")


def run_cli(main, argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err, err          # one line (progress bars aside)
    return code, errors[0]


def test_eval_refuses_a_vlm_and_bench_refuses_a_causal_lm(vlm_and_lm, capsys):
    vlm, lm = vlm_and_lm
    code, err = run_cli(evollm_main, ["eval", "--model", vlm, "--limit", "1"], capsys)
    assert code == 2 and f"model {vlm} is a vision-language model (LlavaForConditionalGeneration)" in err
    assert f"`evovlm bench --model {vlm}`" in err
    code, err = run_cli(evovlm_main, ["bench", "--model", lm, "--limit", "1"], capsys)
    assert code == 2 and f"model {lm} is not a vision-language model (LlamaForCausalLM" in err
    assert f"`evollm eval --model {lm}`" in err


def test_merge_recipe_naming_a_vlm_points_to_evovlm(vlm_and_lm, tmp_path, capsys):
    vlm, lm = vlm_and_lm
    (tmp_path / "r.yaml").write_text(f"merge_method: linear\nmodels:\n  - model: {lm}\n    parameters: {{weight: 1}}\n"
                                     f"  - model: {vlm}\n    parameters: {{weight: 1}}\n")
    code, err = run_cli(evollm_main, ["merge", "--recipe", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o")],
                        capsys)
    assert code == 2 and f"model {vlm} is a vision-language model (LlavaForConditionalGeneration)" in err
    assert "`evovlm merge --recipe`" in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv,message", [
    (["eval", "--limit", "0"], "--limit must be >= 1, got 0"),
    (["eval", "--limit", "-5"], "--limit must be >= 1, got -5"),
    (["eval", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["eval", "--device", "gpu"], "--device 'gpu' is not a device"),
    (["eval", "--json", "/nonexistent-folder/out.json"], "--json /nonexistent-folder/out.json: folder"),
])
def test_eval_arguments_fail_before_any_work(vlm_and_lm, capsys, argv, message):
    code, err = run_cli(evollm_main, argv + ["--model", vlm_and_lm[1]], capsys)
    assert code == 2 and message in err


def test_eval_bad_data_and_tokenizer_are_one_line(vlm_and_lm, tmp_path, capsys):
    (tmp_path / "e.jsonl").write_text("")
    code, err = run_cli(evollm_main, ["eval", "--model", vlm_and_lm[1], "--data", str(tmp_path / "e.jsonl")], capsys)
    assert code == 2 and "e.jsonl: the file is empty" in err
    (tmp_path / "d.jsonl").write_text(lines(ROW))
    code, err = run_cli(evollm_main, ["eval", "--model", vlm_and_lm[1], "--data", str(tmp_path / "d.jsonl")], capsys)
    assert code == 2 and f"tokenizer {vlm_and_lm[1]}: no tokenizer files" in err


@pytest.mark.parametrize("argv,message", [
    (["--limit", "0"], "--limit must be >= 1, got 0"),
    (["--limit", "-1"], "--limit must be >= 1, got -1"),
    (["--data", "world-vqq=x.parquet"], "--data names task(s) ['world-vqq'] that are not among the tasks run"),
    (["--tasks", ","], "no task given"),
])
def test_bench_arguments_fail_before_any_work(vlm_and_lm, capsys, argv, message):
    code, err = run_cli(evovlm_main, ["bench", "--model", vlm_and_lm[0]] + argv, capsys)
    assert code == 2 and message in err


def test_check_device():
    check_device("cpu")
    with pytest.raises(ValueError, match="--device 'tpu0' is not a device"):
        check_device("tpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA device"):
            check_device("cuda")
