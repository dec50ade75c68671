"""Files that ship with the repository, not with the installed package: the run configs (`configs/`)
and the miniature world (`assets/`). Found in the checkout the package runs from (an editable
install, or the source tree), else under $EVOLLM_HOME; when neither has them, the error says how to
get them. Nothing in the core needs them: only defaults of the command lines do."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "EVOLLM_HOME"


def checkout_file(*parts: str, what: str) -> Path:
    """The path of `parts` (e.g. "configs", "world-ja-math.yaml") in the checkout."""
    roots = [Path(os.environ[ENV]).expanduser()] if os.environ.get(ENV) else []
    roots.append(Path(__file__).resolve().parents[1])
    for root in roots:
        path = root.joinpath(*parts)
        if path.exists():
            return path
    raise FileNotFoundError(
        f"{what} ({'/'.join(parts)}) is not here: it ships with the repository, not with the installed "
        f"package. Run from a clone of the repository, set {ENV} to one "
        f"(`export {ENV}=/path/to/evollm`), or name the file yourself (--config / --data)")
