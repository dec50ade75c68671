"""Parameter-space merge kernels: pure functions over tensors, no I/O."""

from .methods import METHODS, MergeMethod, Param, TaskVectors, get_method, register
from .rng import MaskStream, mask_stream
from .taskvec import l1_norm, merge_task_vectors

__all__ = ["METHODS", "MaskStream", "MergeMethod", "Param", "TaskVectors", "get_method", "l1_norm",
           "mask_stream", "merge_task_vectors", "register"]
