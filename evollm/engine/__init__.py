"""The merge engine: a recipe's kernels (`evollm.kernels`) applied to whole models; one engine, two sinks.

`plan`: a recipe (a search candidate is one) planned once: tensors, inputs, checks, resolved
parameters. `execute`: one planned tensor merged (the kernels, the counter-based random streams, the
NaN check). Sinks: `disk` streams the merged tensors into a checkpoint (`evollm merge --recipe`);
`memory` writes them in place into one resident model (search candidates), holding task vectors.
"""
