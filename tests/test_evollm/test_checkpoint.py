"""Reading and writing checkpoints: lazy reads, planned streaming shards, atomic folders."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from evollm.checkpoint import AtomicFolder, Checkpoint, CheckpointError, ShardedWriter


def tensors():
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(5, 3, generator=g),
            "b.bias": torch.randn(7, generator=g).to(torch.bfloat16),
            "c.idx": torch.arange(4, dtype=torch.int64),
            "d.half": torch.randn(2, 2, generator=g).half()}


def test_writer_shards_and_reader_round_trip(tmp_path):
    ts = tensors()
    w = ShardedWriter(tmp_path, [(n, t.dtype, tuple(t.shape)) for n, t in ts.items()], max_shard_bytes=64)
    for n, t in ts.items():
        w.write(n, t)
    w.close()
    assert len(w.files) > 1
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(ts)
    # files are valid safetensors (read by the reference library) with the right contents
    loaded = {}
    for f in w.files:
        loaded.update(load_file(tmp_path / f))
    for n, t in ts.items():
        assert torch.equal(loaded[n], t) and loaded[n].dtype == t.dtype
    ck = Checkpoint(tmp_path)
    assert set(ck.names()) == set(ts)
    for n, t in ts.items():
        assert ck.shape(n) == tuple(t.shape) and ck.dtype(n) == t.dtype
        assert torch.equal(ck.get(n), t)


def test_writer_refuses_out_of_order_or_missing(tmp_path):
    ts = tensors()
    w = ShardedWriter(tmp_path, [(n, t.dtype, tuple(t.shape)) for n, t in ts.items()])
    with pytest.raises(RuntimeError, match="expected tensor a.weight"):
        w.write("b.bias", ts["b.bias"])
    w.write("a.weight", ts["a.weight"])
    with pytest.raises(RuntimeError, match="writer closed after 1 of 4"):
        w.close()


def test_reader_single_file_from_reference_writer(tmp_path):
    ts = tensors()
    save_file(ts, tmp_path / "model.safetensors")
    ck = Checkpoint(tmp_path)
    for n, t in ts.items():
        assert torch.equal(ck.get(n), t)
    with pytest.raises(CheckpointError, match="has no tensor nope"):
        ck.get("nope")


def test_pickles_only_behind_the_flag(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="only with --allow-pickle"):
        Checkpoint(tmp_path, name="m")
    ck = Checkpoint(tmp_path, allow_pickle=True)
    assert torch.equal(ck.get("w"), torch.ones(2))


def test_corrupt_and_missing_weights_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="no weights"):
        Checkpoint(tmp_path, name="empty")
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json!!!!!!")
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt safetensors header"):
        Checkpoint(tmp_path)
    save_file({"w": torch.ones(1000)}, tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match="truncated at tensor w"):
        Checkpoint(tmp_path).get("w")


def test_atomic_folder(tmp_path):
    out = tmp_path / "out"
    with AtomicFolder(out) as tmp:
        (tmp / "x").write_text("1")
    assert (out / "x").read_text() == "1"
    with pytest.raises(FileExistsError, match="already exists; pass --force"):
        AtomicFolder(out)
    with pytest.raises(RuntimeError):
        with AtomicFolder(out, force=True) as tmp:
            (tmp / "x").write_text("2")
            raise RuntimeError("boom")
    assert (out / "x").read_text() == "1"            # a failed run leaves the old output
    assert [p.name for p in tmp_path.iterdir()] == ["out"]   # and no temporary folder
    with AtomicFolder(out, force=True) as tmp:
        (tmp / "x").write_text("3")
    assert (out / "x").read_text() == "3"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
