"""Strip heavy outputs from the course notebooks before committing them.

    python notebooks/strip_outputs.py notebooks/*.ipynb

Keeps text and PNG outputs (small, and shown by GitHub's viewer); drops plotly figures, widget
views and HTML (large, and they need JavaScript or a live kernel). Execution counts stay: nbval
refuses a cell that has outputs but no execution count.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KEEP = {"text/plain", "image/png"}
MAX_PNG_CHARS = 400_000  # a base64 PNG larger than this (300 kB) is dropped too: a word grid fits


def strip(path: Path) -> None:
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            if "data" in out:
                data = {k: v for k, v in out["data"].items() if k in KEEP}
                if len("".join(data.get("image/png", ""))) > MAX_PNG_CHARS:
                    data.pop("image/png")
                if data and ("image/png" in data or "application/vnd.plotly.v1+json" not in out["data"]):
                    kept.append({**out, "data": data})
                continue
            kept.append(out)
        cell["outputs"] = kept
    nb.get("metadata", {}).pop("widgets", None)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        strip(Path(p))
