"""What each entry point imports: reading a trace needs no diffusers, editing no captum, `--help` no torch.

Timings are measured by benchmarks/startup.py; these tests pin the imports that make them fast.
"""

from __future__ import annotations

import json
import subprocess
import sys

import diffviz

HEAVY = ("torch", "diffusers", "transformers", "captum", "plotly")


def imported_after(code: str) -> dict[str, bool]:
    """Run ``code`` in a fresh interpreter; which of HEAVY it left in sys.modules."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_reading_a_trace_does_not_import_diffusers(traced, tmp_path):
    path = traced[1].save(tmp_path / "run.dvz")
    seen = imported_after(f"import diffviz\ntr = diffviz.load_trace({str(path)!r})\ntr.word_heatmap('red')")
    assert seen == {"torch": True, "diffusers": False, "transformers": False, "captum": False, "plotly": False}


def test_import_and_help_do_not_import_torch():
    seen = imported_after("import diffviz, diffviz.cli\ntry:\n    diffviz.cli.main(['--help'])\n"
                          "except SystemExit:\n    pass")
    assert not any(seen.values()), seen


def test_edits_do_not_import_captum():
    seen = imported_after("import diffviz.edit")
    assert seen["torch"] and not seen["captum"] and not seen["diffusers"]  # diffusers loads with a pipeline


def test_the_public_names_resolve_lazily():
    import diffviz.trace  # the submodule must not hide the context manager of the same name

    assert callable(diffviz.trace) and diffviz.trace.__module__ == "diffviz.capture.install"
    assert diffviz.Trace.__name__ == "Trace" and diffviz.load_trace.__module__ == "diffviz.io"
    assert set(diffviz.__all__) <= set(dir(diffviz))
    for name in diffviz.__all__:
        assert getattr(diffviz, name) is not None, name
