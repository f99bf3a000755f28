"""The course's 90-minute path (notebooks/README.md): the cells tagged ``path90`` run alone, in order, in a
fresh kernel; the README names exactly the sections they cover, in at most 90 minutes; and every lesson's
first cell states its objectives and its time."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
README = NOTEBOOKS / "README.md"
TAG = "path90"
LESSONS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def read(notebook: Path) -> nbformat.NotebookNode:
    return nbformat.read(notebook, as_version=4)


def path_cells(nb: nbformat.NotebookNode) -> list:
    """The cells tagged TAG, in order."""
    return [c for c in nb.cells if TAG in c.metadata.get("tags", [])]


ON_PATH = [notebook for notebook in LESSONS if path_cells(read(notebook))]


def number(notebook: Path) -> int:
    return int(notebook.name[:2])


def readme_path() -> dict[int, tuple[int, list[str]]]:
    """Lesson number -> (its minutes, its sections) from the README's "## The 90-minute path": a line
    "### Lesson N · Title (M minutes)", then a bullet "- `## heading`" per section."""
    text = README.read_text(encoding="utf-8").split("\n## The 90-minute path\n")[1].split("\n## ")[0]
    lessons, current = {}, None
    for line in text.splitlines():
        if line.startswith("### "):
            m = re.fullmatch(r"### Lesson (\d+) .+ \((\d+) minutes\)", line)
            current = int(m[1]) if m else None
            if m:
                lessons[current] = (int(m[2]), [])
        elif current is not None and (m := re.match(r"- `(## [^`]+)`", line)):
            lessons[current][1].append(m[1])
    return lessons


def test_readme_names_the_path_sections_in_at_most_90_minutes():
    listed = readme_path()
    assert ON_PATH and sorted(listed) == [number(notebook) for notebook in ON_PATH]
    for notebook in ON_PATH:
        headings = [line for c in path_cells(read(notebook)) if c.cell_type == "markdown"
                    for line in c.source.splitlines() if line.startswith("## ")]
        assert listed[number(notebook)][1] == headings, notebook.name
    assert sum(minutes for minutes, _ in listed.values()) <= 90


def test_every_lesson_opens_with_objectives_and_the_time_in_the_readme():
    readme = README.read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+) \|.*\| (\d+) min", readme, re.MULTILINE)  # the table of the lessons
    table = {int(n): int(minutes) for n, minutes in rows}
    assert len(LESSONS) == 11
    for notebook in LESSONS:
        first = read(notebook).cells[0].source
        assert "**You will be able to**" in first, notebook.name
        time = re.search(r"\*\*Time:\*\* about (\d+) minutes", first)
        assert time and table[number(notebook)] == int(time[1]), f"{notebook.name}: no time, or another one"


@pytest.mark.slow
@pytest.mark.parametrize("notebook", ON_PATH, ids=lambda notebook: notebook.stem)
def test_the_path_cells_run_alone_in_a_fresh_kernel(notebook):
    nb = read(notebook)
    path_only = nbformat.v4.new_notebook(cells=path_cells(nb), metadata=nb.metadata)
    client = NotebookClient(path_only, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # a failing cell raises CellExecutionError
