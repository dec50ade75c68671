"""Executing a planned tensor: the one place both sinks merge a `TensorTask`.

`merge_task(task, method, inputs, seed)` asks `inputs` for what the method needs and runs the kernel:
the task-vector family gets the base and the task vectors (`Inputs.task_vectors`: the disk sink
subtracts what it reads, a search's resident inputs hand over the task vectors they hold) and runs the
fused kernel `kernels.taskvec.merge_task_vectors`; every other method gets the input tensors and runs
its registered function. Random masks come from the counter-based streams named by (seed, candidate,
task.name, input position). A result with NaN or inf is an error naming the tensor.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from ..kernels.methods import MergeMethod
from ..kernels.rng import mask_stream
from ..kernels.taskvec import merge_task_vectors
from .plan import MergeError, TensorTask


class Inputs:
    """What the executor reads: input tensors of a task in its work dtype on the merge device (never
    modified), and its base and task vectors."""
    device = "cpu"

    def tensor(self, task: TensorTask, i: int) -> torch.Tensor:
        raise NotImplementedError

    def streams(self, task: TensorTask, idx: List[int], seed: int, candidate: int, sparsify: str) -> list:
        """The random masks' sources of inputs `idx`: their counter-based streams (or, from a caller
        that holds them, the streams' uniforms over the tensor, `rng.uniform24`)."""
        return [mask_stream(seed, task.name, i, candidate) for i in idx]

    def task_vectors(self, task: TensorTask) -> Tuple[torch.Tensor, List[torch.Tensor], Optional[Sequence]]:
        """(base, [X_i - base for every non-base input i, in input order], their L1 norms or None)."""
        b = self.tensor(task, task.base)
        idx = others(task)
        d = torch.empty((len(idx), b.numel()), dtype=b.dtype, device=b.device)     # rows of one buffer
        for k, i in enumerate(idx):
            torch.sub(self.tensor(task, i).reshape(-1), b.reshape(-1), out=d[k])
        return b, [d[k].view(b.shape) for k in range(len(idx))], None


class CheckpointInputs(Inputs):
    """Inputs read from checkpoints (or anything with `get(name)`), one tensor at a time."""

    def __init__(self, ckpts, device="cpu"):
        self.ckpts, self.device = ckpts, device

    def tensor(self, task, i):
        ref, name = task.inputs[i]
        return self.ckpts[ref].get(name).to(device=self.device, dtype=task.work_dtype)


def others(task: TensorTask) -> List[int]:
    return [i for i in range(len(task.inputs)) if i != task.base]


def _nan_error(task: TensorTask, method: MergeMethod) -> MergeError:
    return MergeError(f"tensor {task.name}: the merge produced NaN or inf "
                      f"(method {method.name}, parameters {task.params}, {task.per_input})")


def merge_task(task: TensorTask, method: MergeMethod, inputs: Inputs, seed: int, candidate: int = 0,
               out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The merged tensor of `task` in its work dtype, or, with `out` (a tensor of the task's shape, any
    floating dtype, e.g. a model's live parameter), written into `out` and `out` returned. A NaN or inf
    result raises MergeError naming the tensor (when writing into `out`, after it was written)."""
    if not task.work_dtype.is_floating_point:              # integer buffers: the base's (or first) copy
        x = inputs.tensor(task, task.base or 0)
        return out.copy_(x) if out is not None else x
    tv = method.task_vectors
    if tv is not None:
        b, deltas, norms = inputs.task_vectors(task)
        idx = others(task)
        streams = inputs.streams(task, idx, seed, candidate, tv.sparsify) if tv.random else [None] * len(idx)
        direct = out is not None and out.is_contiguous()
        bounds: list = []
        res = merge_task_vectors(b, deltas, [task.per_input[i] for i in idx], task.params, streams,
                                 sparsify=tv.sparsify, consensus=tv.consensus, norms=norms,
                                 out=out if direct else None, bounds=bounds)
        if bounds and not torch.isfinite(torch.stack(bounds)).all():
            raise _nan_error(task, method)
        if out is not None and not direct:
            out.copy_(res)
            return out
        return res
    tensors = [inputs.tensor(task, i) for i in range(len(task.inputs))]
    res = method.fn(tensors, task.base, task.params, task.per_input,
                    lambda i: mask_stream(seed, task.name, i, candidate))
    if res.numel() and not torch.isfinite(torch.stack(torch.aminmax(res))).all():   # NaN propagates to min/max
        raise _nan_error(task, method)
    return out.copy_(res) if out is not None else res
