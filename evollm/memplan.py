"""The memory plan of a search: from a budget (the device's memory, or `device_memory`), where the
sources live, what the candidate model and the KV cache take, and the decoding batch that fits.

    plan: sources on host (57.9 GB pinned), candidate on cuda:0 14.5 GB, KV 48.7 GB (131.1 KB/token x
    1452 columns x 256 rows), batch 256; 66.4 GB of 73.6 GB on cuda:0

Sources are what the candidates are merged from: the base and every source model, held in the run's
`dtype` (for a search, as task vectors of the same size). They stay on the device when they fit beside
the candidate, the merge's float32 temporaries and a KV cache for at least `MIN_BATCH` rows; otherwise
in pinned host memory, streamed to the device tensor by tensor for each merge. On the CPU, device and
host are one memory. Sizes are computed from the models' configs and tensor shapes, not measured.
"""

from __future__ import annotations

from dataclasses import dataclass

from .decode import GROW

MIN_BATCH = 16          # the smallest decoding batch worth keeping the sources on the device for
MAX_BATCH = 256         # beyond this, a larger batch buys little on one GPU
TEMP_EXTRA = 2          # float32 temporaries of the largest tensor's merge: every input cast, plus mask and output
RESERVE = 0.08          # of the budget left to the allocator, activations and the CUDA context


@dataclass(frozen=True)
class MemoryPlan:
    device: str
    budget: int                 # bytes the plan may use on the device
    sources_on: str             # "device" or "host"
    sources_bytes: int          # base + sources in the run's dtype
    candidate_bytes: int        # the resident model merges are written into
    temp_bytes: int             # merge temporaries (largest tensor, float32)
    kv_per_token: int           # bytes of KV cache per token of one row
    max_tokens: int             # prompt + new tokens of the longest row
    batch: int                  # decoding rows that fit (at most the task's own batch size)

    @property
    def kv_bytes(self) -> int:
        return self.kv_per_token * self.columns * self.batch

    @property
    def columns(self) -> int:
        """Cache columns per row: the longest row plus the decoder's room to grow (decode.GROW)."""
        return self.max_tokens + GROW

    @property
    def device_bytes(self) -> int:
        on = self.sources_bytes if self.sources_on == "device" else 0
        return on + self.candidate_bytes + self.temp_bytes + self.kv_bytes

    def describe(self) -> str:
        from .fsutil import human
        kv = (f"KV {human(self.kv_bytes)} ({human(self.kv_per_token)}/token x {self.columns} columns x "
              f"{self.batch} rows), batch {self.batch}; {human(self.device_bytes)} of {human(self.budget)} on "
              f"{self.device}")
        if not self.sources_bytes:          # DFS: the sources are the models, candidates share their layers
            return f"plan: models on {self.device} {human(self.candidate_bytes)} (candidates share their layers), {kv}"
        where = ("on host ({} pinned)" if self.sources_on == "host" and self.device != "cpu" else "on {1} ({0})")
        return (f"plan: sources {where.format(human(self.sources_bytes), self.device)}, candidate on {self.device} "
                f"{human(self.candidate_bytes)}, {kv}")


def kv_bytes_per_token(config: dict, dtype_bytes: int) -> int:
    """Key and value bytes one token adds to the cache of a decoder (its text config for a VLM)."""
    c = config.get("text_config") or config
    heads = c["num_attention_heads"]
    kv_heads = c.get("num_key_value_heads") or heads
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    return 2 * c["num_hidden_layers"] * kv_heads * head_dim * dtype_bytes


def device_budget(device: str, device_memory: int | None = None) -> int:
    """The bytes a plan may use: `device_memory` when given (capped at what the device has), else
    the device's total memory (a GPU's, or the machine's RAM on the CPU), less a reserve."""
    if device.startswith("cuda"):
        import torch
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    else:
        import os
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    have = min(total, device_memory) if device_memory else total
    return int(have * (1 - RESERVE))


def plan_memory(*, device: str, budget: int, model_bytes: int, largest_tensor: int, n_inputs: int,
                store_bytes_per_param: float, model_params: int, kv_per_token: int, max_tokens: int,
                batch: int) -> MemoryPlan:
    """Place the sources and size the decoding batch within `budget` bytes.

    model_bytes: the candidate model as resident (its dtype); model_params: parameters merged per
    input; n_inputs: base + sources; largest_tensor: elements of the largest merged tensor; batch: the
    task's batch size (the plan never exceeds it)."""
    sources = int(model_params * store_bytes_per_param * n_inputs)
    temp = (n_inputs + TEMP_EXTRA) * 4 * largest_tensor
    row = kv_per_token * (max_tokens + GROW)          # MemoryPlan.columns
    cap = min(batch, MAX_BATCH)

    def rows(free):
        return max(0, min(cap, free // row)) if row else cap
    fixed = model_bytes + temp
    on_device = budget - fixed - sources
    if device == "cpu" or rows(on_device) >= min(MIN_BATCH, cap):
        where, free = "device", on_device
    else:
        where, free = "host", budget - fixed
    n = rows(free)
    if n < 1:
        from .fsutil import human
        held = f"the sources ({human(sources)}), " if where == "device" else ""
        raise MemoryError(f"memory plan: {held}the candidate model ({human(model_bytes)}) and one row of KV "
                          f"cache ({human(row)}) do not fit in {human(budget)} on {device}; lower "
                          "task.max_new_tokens, use a smaller dtype, or a larger device_memory")
    return MemoryPlan(device, budget, where, sources, model_bytes, temp, kv_per_token, max_tokens, n)
