"""One table from several run folders: each run's evolved model (and, once, the reference rows of the
first run), on the fitness and held-out test splits. Used for the PS / DFS / PS+DFS comparison.

    python benchmarks/summarize.py LABEL=RUN_FOLDER [LABEL=RUN_FOLDER ...]
"""

import json
import sys
from pathlib import Path


def evolved_rows(folder: Path) -> dict:
    data = json.loads((folder / "report.json").read_text())
    if "ps" in data and "dfs" in data:          # a PS+DFS run: its phase-2 model
        data = data["dfs"]
    return data


def main(argv):
    runs = [a.split("=", 1) for a in argv]
    first = evolved_rows(Path(runs[0][1]))
    cols = first["columns"]
    print("| model | fitness | test | " + " | ".join(f"test {c}" for _, c in cols) + " |")
    print("|---|---:|---:|" + "---:|" * len(cols))
    line = lambda label, r: print(f"| {label} | {r['fitness']['score']:.1f} | {r['test']['score']:.1f} | "
                                  + " | ".join(f"{r['test'][k]:.1f}" for k, _ in cols) + " |")
    for label, r in first["rows"].items():
        if not label.startswith("evolved"):
            line(label, r)
    for label, folder in runs:
        rows = evolved_rows(Path(folder))["rows"]
        for ref, r in rows.items():        # reference rows only this run has (e.g. the frankenmerge)
            if ref not in first["rows"] and not ref.startswith("evolved"):
                line(f"{label}: {ref}", r)
        line(f"evolved: {label}", rows["evolved (best/model)"])
    for label, fit, test in first["baselines"]:
        print(f"| {label} | {'' if fit is None else f'{fit:.1f}'} | {test:.1f} |" + " |" * len(cols))


if __name__ == "__main__":
    main(sys.argv[1:])
