"""The merge engine: a recipe's kernels (`evollm.kernels`) applied to whole models, two ways.

`disk`: plan a recipe and stream it to a checkpoint one output tensor at a time (`evollm merge
--recipe`). `memory`: write a merge in place into one resident model (search candidates).
"""
