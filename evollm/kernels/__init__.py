"""Parameter-space merge kernels: pure functions over tensors, no I/O."""

from .methods import METHODS, MergeMethod, Param, get_method, register
from .rng import tensor_generator

__all__ = ["METHODS", "MergeMethod", "Param", "get_method", "register", "tensor_generator"]
