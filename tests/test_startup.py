"""What each entry point imports: reading a trace needs no diffusers, editing no captum, `--help` no torch.

Timings are measured by benchmarks/startup.py; these tests pin the imports that make them fast.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

HEAVY = ("torch", "diffusers", "transformers", "captum", "plotly")


def imported_after(code: str) -> dict[str, bool]:
    """Run ``code`` in a fresh interpreter; which of HEAVY it left in sys.modules."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_reading_a_trace_does_not_import_diffusers(traced, tmp_path):
    path = traced[1].save(tmp_path / "run.dvz")
    seen = imported_after(f"import diffviz\ntr = diffviz.load_trace({str(path)!r})\ntr.word_heatmap('red')")
    assert seen == {"torch": True, "diffusers": False, "transformers": False, "captum": False,
                    "plotly": False}


def test_import_and_help_do_not_import_torch():
    seen = imported_after("import diffviz, diffviz.cli\ntry:\n    diffviz.cli.main(['--help'])\n"
                          "except SystemExit:\n    pass")
    assert not any(seen.values()), seen


def test_edits_do_not_import_captum():
    seen = imported_after("import diffviz.edit")
    assert seen["torch"] and not seen["captum"] and not seen["diffusers"]  # diffusers loads with a pipeline


def test_the_public_names_resolve_lazily():
    import diffviz.traces  # the container's module; diffviz.trace stays the context manager

    assert callable(diffviz.trace) and diffviz.trace.__module__ == "diffviz.capture.install"
    assert diffviz.traces.Trace is diffviz.Trace
    assert callable(diffviz.viz.word_heatmap) and "explore" in dir(diffviz.viz)
    assert diffviz.Trace.__name__ == "Trace" and diffviz.load_trace.__module__ == "diffviz.io"
    assert set(diffviz.__all__) <= set(dir(diffviz))
    for name in diffviz.__all__:
        assert getattr(diffviz, name) is not None, name


# A base install (`pip install diffviz`, no extras): a fresh interpreter in which the extras' modules cannot
# be imported, as if they were not installed.
EXTRAS_HIDDEN = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'ipywidgets', 'anywidget', 'jupyterlab', 'kaleido', 'pandas', 'pyarrow'}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Hide())
import importlib.util
_find_spec = importlib.util.find_spec
def find_spec(name, package=None):
    try:
        return _find_spec(name, package)
    except ModuleNotFoundError:
        return None
importlib.util.find_spec = find_spec
"""


def on_a_base_install(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", EXTRAS_HIDDEN + code], capture_output=True, text=True,
                          cwd=cwd, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_viz_figures_and_report_work_without_the_extras_and_the_explorer_says_what_to_install(
        traced, tmp_path):
    path = traced[1].save(tmp_path / "run.dvz")
    out = on_a_base_install(f"""
import diffviz
tr = diffviz.load_trace({str(path)!r})
assert type(diffviz.viz.word_heatmap(tr, 'red')).__name__ == 'Figure'
diffviz.viz.report(tr, 'run.html')
try:
    diffviz.viz.explore(tr)
except ImportError as err:
    print('MESSAGE', err)
""", tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "run.html").stat().st_size > 1000
    assert re.search(r"MESSAGE the diffviz explorer needs (ipywidgets|anywidget), which is not installed: "
                     r"pip install 'diffviz\[notebooks\]'\.", out.stdout), out.stdout


def test_every_cli_command_works_or_names_its_extra_in_one_line_without_the_extras(traced, tmp_path):
    path = traced[1].save(tmp_path / "run.dvz")
    (tmp_path / "prompts.txt").write_text("a red circle\n")
    run = "import sys\nfrom diffviz.cli import main\nsys.exit(main({args!r}))"
    report = on_a_base_install(run.format(args=["report", str(path), "-q"]), tmp_path)
    assert report.returncode == 0 and (tmp_path / "run.html").is_file(), report.stderr
    explain = on_a_base_install(run.format(args=["explain", "a red circle", "--steps", "2", "-q", "--out",
                                                  "explained.html"]), tmp_path)
    assert explain.returncode == 0 and (tmp_path / "explained.html").is_file(), explain.stderr
    for args in (["batch", "prompts.txt", "--out", "study"], ["study", "study"]):
        out = on_a_base_install(run.format(args=args), tmp_path)
        assert out.returncode == 1 and out.stderr.strip().splitlines() == [
            ("diffviz: error: pandas is not installed (needed by diffviz batch and diffviz.study): "
             "pip install 'diffviz[studies]'.")], out.stderr
