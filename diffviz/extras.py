"""The optional extras of pyproject.toml, for one-line messages when one is missing.

A base install (``pip install diffviz``) traces, saves, loads, draws figures and writes reports; the
explorer widget needs the ``notebooks`` extra (ipywidgets, anywidget), batch studies the ``studies``
extra (pandas, pyarrow), loading a Wan or CogVideoX checkpoint the ``video`` extra (accelerate).
"""

from __future__ import annotations

import importlib.util


def install_hint(extra: str) -> str:
    return f"pip install 'diffviz[{extra}]'."


def require(extra: str, who: str, modules: tuple[str, ...]) -> None:
    """ImportError in one line naming what ``who`` needs and the install command, when one of ``modules``
    (those ``extra`` brings that ``who`` imports) is not installed."""
    name = next((m for m in modules if importlib.util.find_spec(m) is None), None)
    if name is not None:
        raise ImportError(f"{name} is not installed (needed by {who}): {install_hint(extra)}")
