"""Hugging Face checkpoints on disk: read one tensor at a time, write atomically.

Reading parses safetensors headers and reads each tensor's bytes with plain file reads (no
mmap), so the memory a merge holds is the tensors it is working on, not the pages of whole
models. Writing streams each tensor straight into its shard at an offset planned in advance
(every output name, dtype and shape is known before the first tensor is merged), so no
output shard is ever held in memory. Everything is written into a temporary folder that is
renamed into place only when complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import torch

from .fsutil import AtomicFolder, check_free, disk_full  # noqa: F401 (AtomicFolder: re-exported)

ST_DTYPES: Dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}

DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
               "float64": torch.float64}

TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json",
                   "tokenizer.model", "added_tokens.json", "vocab.json", "merges.txt",
                   "chat_template.jinja", "chat_template.json", "generation_config.json")


class CheckpointError(ValueError):
    """A checkpoint cannot be read as asked; the message names the file or tensor."""


def dtype_from_name(name: str, where: str = "dtype") -> torch.dtype:
    key = name[len("torch."):] if name.startswith("torch.") else name
    if key not in DTYPE_NAMES:
        raise ValueError(f"{where}: unknown dtype {name!r}; use one of {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[key]


def read_safetensors_header(path: Path) -> Tuple[dict, int]:
    """(header dict, byte offset of the data section) of one .safetensors file, checked: every tensor
    entry has a dtype, a shape and data offsets inside the file whose size matches dtype x shape."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > 100_000_000:
                raise CheckpointError(f"{path}: not a safetensors file (header size {n})")
            if 8 + n > size:
                raise CheckpointError(f"{path}: corrupt safetensors header (the file ends inside it: {size} bytes, "
                                      f"the header needs {8 + n}); the file is truncated")
            header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
    for name, info in header.items():
        if name != "__metadata__":
            _check_entry(path, name, info, size - 8 - n)
    return header, 8 + n


#: bytes per element of the safetensors dtypes torch has no dtype for here
_ST_SIZES = {"U16": 2, "U32": 4, "U64": 8, "C64": 8, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1, "F8_E8M0": 1}


def _check_entry(path: Path, name: str, info, data_size: int) -> None:
    """One tensor entry of a safetensors header: dtype, shape, offsets inside the data section."""
    where = f"{path}: tensor {name}"
    if not isinstance(info, dict) or any(k not in info for k in ("dtype", "shape", "data_offsets")):
        raise CheckpointError(f"{where}: header entry needs dtype, shape and data_offsets, got {info!r:.120}")
    shape, offsets = info["shape"], info["data_offsets"]
    ints = lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
    if not ints(shape) or not ints(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise CheckpointError(f"{where}: bad shape {shape!r:.60} or data_offsets {offsets!r:.60} in the header")
    if offsets[1] > data_size:
        raise CheckpointError(f"{path}: truncated at tensor {name} (its data ends at byte {offsets[1]} of the data "
                              f"section, which has {data_size})")
    code = info["dtype"]
    item = ST_DTYPES[code].itemsize if code in ST_DTYPES else _ST_SIZES.get(code)
    if item is not None and offsets[1] - offsets[0] != item * math.prod(shape):
        raise CheckpointError(f"{where}: {offsets[1] - offsets[0]} bytes of data for dtype {code} and shape "
                              f"{shape} ({item * math.prod(shape)} bytes)")


def read_json(path: Path, what: str = "") -> dict:
    """A JSON object from a file; an error names the file (and line) if it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{what}{path}: invalid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{what}{path}: not UTF-8 text") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{what}{path}: expected a JSON object, got a {type(data).__name__}")
    return data


class Checkpoint:
    """A model folder: config.json and weights (single or sharded safetensors; pickled
    ``.bin`` only with ``allow_pickle=True``, then loaded with ``weights_only=True``).

    ``name`` is how errors refer to the model (the recipe's reference).
    """

    def __init__(self, path, name: Optional[str] = None, allow_pickle: bool = False):
        self.path = Path(path)
        self.name = name or str(path)
        if not self.path.is_dir():
            raise CheckpointError(f"model {self.name}: {self.path} is not a folder")
        cfg = self.path / "config.json"
        self.config: dict = read_json(cfg, f"model {self.name}: ") if cfg.exists() else {}
        self._entries: Dict[str, Tuple[Path, str, Tuple[int, ...], int, int]] = {}
        self._pickled: Dict[str, Path] = {}
        self._pickle_cache: Tuple[Optional[Path], dict] = (None, {})
        files = self._weight_files(allow_pickle)
        for f in files:
            if f.suffix == ".safetensors":
                header, start = read_safetensors_header(f)
                for tname, info in header.items():
                    if tname == "__metadata__":
                        continue
                    b, e = info["data_offsets"]
                    self._entries[tname] = (f, info["dtype"], tuple(info["shape"]), start + b, e - b)
            else:
                for tname in self._load_pickle(f):
                    self._pickled[tname] = f

    def _weight_files(self, allow_pickle: bool) -> List[Path]:
        p = self.path
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            index = p / index_name
            if index.exists():
                if index_name.endswith(".bin.index.json") and not allow_pickle:
                    break
                weight_map = read_json(index, f"model {self.name}: ").get("weight_map")
                if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                    raise CheckpointError(f"model {self.name}: {index} has no weight_map of tensor name -> file")
                files = sorted({p / v for v in weight_map.values()})
                missing = [str(f) for f in files if not f.is_file()]
                if missing:
                    raise CheckpointError(f"model {self.name}: {index} lists missing shards {missing}")
                return files
        st = sorted(p.glob("*.safetensors"))
        if st:
            return st
        bins = sorted(p.glob("*.bin"))
        if bins and not allow_pickle:
            raise CheckpointError(
                f"model {self.name}: {p} holds only pickled .bin weights; pickles can run code "
                "when loaded, so they are read only with --allow-pickle (then with "
                "torch.load(weights_only=True)). Better: convert the model to safetensors.")
        if bins:
            return bins
        raise CheckpointError(f"model {self.name}: no weights (*.safetensors) found in {p}")

    def _load_pickle(self, f: Path) -> dict:
        if self._pickle_cache[0] != f:
            sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            self._pickle_cache = (f, sd)
        return self._pickle_cache[1]

    # -- queries
    def names(self) -> List[str]:
        return list(self._entries) + [n for n in self._pickled if n not in self._entries]

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._pickled

    def shape(self, name: str) -> Tuple[int, ...]:
        if name in self._entries:
            return self._entries[name][2]
        return tuple(self._load_pickle(self._pickled[name])[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        if name in self._entries:
            code = self._entries[name][1]
            if code not in ST_DTYPES:
                raise CheckpointError(f"model {self.name}: tensor {name} has unsupported dtype {code}")
            return ST_DTYPES[code]
        return self._load_pickle(self._pickled[name])[name].dtype

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor into fresh CPU memory."""
        if name not in self._entries:
            if name in self._pickled:
                return self._load_pickle(self._pickled[name])[name].clone()
            raise CheckpointError(f"model {self.name} has no tensor {name}")
        f, code, shape, offset, nbytes = self._entries[name]
        dtype = self.dtype(name)
        buf = torch.empty(nbytes, dtype=torch.uint8)
        with open(f, "rb") as fh:
            fh.seek(offset)
            got = fh.readinto(memoryview(buf.numpy()))
        if got != nbytes:
            raise CheckpointError(f"model {self.name}: {f} is truncated at tensor {name}")
        return buf.view(dtype).reshape(shape)


def vlm_architecture(config: dict) -> Optional[str]:
    """The class of a vision-language model's config (model_type llava / llava_next, or any config with
    a vision_config), e.g. 'LlavaForConditionalGeneration'; None for other models."""
    if config.get("model_type") not in ("llava", "llava_next") and "vision_config" not in config:
        return None
    archs = config.get("architectures")
    return archs[0] if isinstance(archs, list) and archs else f"model_type {config.get('model_type')!r}"


def check_model_folder(path, name: Optional[str] = None, kind: Optional[str] = "causal-lm") -> dict:
    """Check a model folder cheaply (config.json and every safetensors header, no tensor read) before
    transformers loads it; with ``kind`` 'causal-lm' or 'vlm' also that it is one. Returns its config."""
    ck = Checkpoint(path, name)
    name, cfg_file = ck.name, ck.path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"model {name}: no config.json in {ck.path}")
    model_type, vlm = ck.config.get("model_type"), vlm_architecture(ck.config)
    if not isinstance(model_type, str):
        raise CheckpointError(f"model {name}: {cfg_file} has no model_type")
    if kind == "causal-lm":
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        if vlm:
            raise CheckpointError(f"model {name} is a vision-language model ({vlm}), not a causal LM: score it "
                                  f"with `evovlm bench --model {name}`, merge it with `evovlm merge`")
        if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise CheckpointError(f"model {name}: model_type {model_type!r} ({cfg_file}) is not a causal LM "
                                  "architecture that transformers knows")
    elif kind == "vlm" and not vlm:
        arch = (ck.config.get("architectures") or [model_type])[0]
        raise CheckpointError(f"model {name} is not a vision-language model ({arch}; no vision_config in its "
                              f"config.json): score a causal LM with `evollm eval --model {name}`")
    return ck.config


# --------------------------------------------------------------------------- writing


def _shard_plan(specs: List[Tuple[str, torch.dtype, Tuple[int, ...]]], max_shard_bytes: int):
    """Assign tensors (in order) to shards of at most ``max_shard_bytes`` (a tensor larger than
    that gets a shard of its own)."""
    shards: List[List[Tuple[str, torch.dtype, Tuple[int, ...]]]] = [[]]
    size = 0
    for spec in specs:
        n = _nbytes(spec[1], spec[2])
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += n
    return shards


def _nbytes(dtype: torch.dtype, shape) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


class ShardedWriter:
    """Writes a planned set of tensors as safetensors shards inside ``folder``.

    ``specs`` is the ordered list of (name, dtype, shape) of every tensor to be written;
    ``write(name, tensor)`` must then be called in that order. Headers are written first, so
    each tensor goes to disk the moment it is merged.
    """

    def __init__(self, folder: Path, specs, max_shard_bytes: int = 5 * 1024**3, metadata=None):
        self.folder = Path(folder)
        self.shards = _shard_plan(list(specs), max_shard_bytes)
        check_free(self.folder, sum(_nbytes(s[1], s[2]) for shard in self.shards for s in shard), "checkpoint")
        n = len(self.shards)
        self.files = (["model.safetensors"] if n == 1 else
                      [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
        self._where = {}
        self._handles = []
        for file, shard in zip(self.files, self.shards):
            header = {"__metadata__": dict(metadata or {"format": "pt"})}
            offset = 0
            for name, dtype, shape in shard:
                nb = _nbytes(dtype, shape)
                header[name] = {"dtype": ST_NAMES[dtype], "shape": list(shape),
                                "data_offsets": [offset, offset + nb]}
                offset += nb
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)
            fh = open(self.folder / file, "wb")
            fh.write(struct.pack("<Q", len(raw)))
            fh.write(raw)
            self._handles.append(fh)
            for name, dtype, shape in shard:
                self._where[name] = (fh, dtype, tuple(shape), file)
        self._order = [s[0] for shard in self.shards for s in shard]
        self._next = 0
        self.bytes_written = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        expected = self._order[self._next] if self._next < len(self._order) else None
        if name != expected:
            raise RuntimeError(f"writer expected tensor {expected}, got {name}")
        fh, dtype, shape, _ = self._where[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise RuntimeError(f"tensor {name}: planned {dtype} {shape}, got {tensor.dtype} {tuple(tensor.shape)}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        with disk_full(self.folder):
            fh.write(memoryview(data.numpy()))
        self.bytes_written += data.numel()
        self._next += 1

    def close(self) -> None:
        for fh in self._handles:
            fh.close()
        if self._next != len(self._order):
            raise RuntimeError(f"writer closed after {self._next} of {len(self._order)} tensors")
        if len(self.files) > 1:
            index = {"metadata": {"total_size": self.bytes_written},
                     "weight_map": {n: w[3] for n, w in self._where.items()}}
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    def abort(self) -> None:
        for fh in self._handles:
            fh.close()


def copy_files(src: Path, dst: Path, names: Iterable[str]) -> List[str]:
    copied = []
    for n in names:
        if (src / n).exists():
            shutil.copy(src / n, dst / n)
            copied.append(n)
    return copied
