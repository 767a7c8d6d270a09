"""Puts `notebooks/setup_cell.py` as the first code cell of every notebook under `notebooks/`
(replacing an earlier copy of it), so a notebook runs in Colab or any fresh Python.

Usage (from the repository root):
    python scripts/setup_cells.py           # write the cell into every notebook
    python scripts/setup_cells.py --check   # exit 1 and name the notebooks without it
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CELL = (NOTEBOOKS / "setup_cell.py").read_text("utf-8").rstrip("\n")
MARKER = CELL.splitlines()[0]  # the cell's first line names it, in any earlier version


def source(cell: dict) -> str:
    text = cell["source"]
    return text if isinstance(text, str) else "".join(text)


def notebooks_without_cell() -> list[Path]:
    """The notebooks whose first code cell is not `setup_cell.py` as it is now.

    Example:
        >>> notebooks_without_cell()  # doctest: +SKIP
        []
    """
    stale = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        cells = json.loads(path.read_text("utf-8"))["cells"]
        code = [c for c in cells if c["cell_type"] == "code"]
        if not code or source(code[0]) != CELL:
            stale.append(path)
    return stale


def write_cell(path: Path) -> None:
    notebook = json.loads(path.read_text("utf-8"))
    cells = notebook["cells"]
    cells[:] = [c for c in cells if not (c["cell_type"] == "code" and source(c).startswith(MARKER))]
    # After the title (a leading markdown cell), before the first code cell.
    at = next((i for i, c in enumerate(cells) if c["cell_type"] == "code"), len(cells))
    lines = CELL.splitlines(keepends=True)
    cells.insert(
        at,
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "setup",
            "metadata": {},
            "outputs": [],
            "source": lines,
        },
    )
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", "utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    stale = notebooks_without_cell()
    if parser.parse_args().check:
        for path in stale:
            print(f"{path.relative_to(ROOT)}: first code cell is not notebooks/setup_cell.py")
        return 1 if stale else 0
    for path in stale:
        write_cell(path)
        print(f"wrote the set-up cell into {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
