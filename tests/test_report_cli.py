"""The HTML report (one offline file) and the ``diffviz`` command."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import re
import sys
from itertools import pairwise
from pathlib import Path

import pytest

import diffviz
import diffviz.classroom
from diffviz.cli import main
from diffviz.testing import tiny_pipeline

PROMPT = "a red circle left of a blue square"


@pytest.fixture(scope="module")
def tr(traced):
    return traced[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny SD pipeline saved as a diffusers folder, as `--model PATH` takes it."""
    path = tmp_path_factory.mktemp("model") / "tiny"
    tiny_pipeline("sd", "ddim").save_pretrained(path)
    return path


def figure_ids(page: str) -> list[str]:
    return re.findall(r'<div id="(fig\d+)" class="plotly-graph-div"', page)


def test_report_is_one_offline_html_file_with_the_main_figures(tr, tmp_path):
    path = diffviz.report(tr, tmp_path / "sub" / "run.html")
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert figure_ids(page) == [f"fig{i}" for i in range(7)]
    for title in ["Denoising, step by step", "Where each word looks", "When each word matters",
                  "Where in the U-Net", "What guidance does", "Noise schedule", "The final latent"]:
        assert f"<h2>{title}" in page
    head, rest = page.split('<script type="text/javascript">', 1)
    plotly_js, body = rest.split("</script>", 1)
    assert "plotly.js v" in plotly_js[:2000] and len(plotly_js) > 3e6  # inlined, not from a CDN
    assert re.search(r"https?://", head + body) is None  # nothing outside plotly.js names the network
    assert not re.search(r"<script[^>]* src=", head + body)
    assert f"<title>diffviz: {PROMPT}</title>" in page
    assert 'src="data:image/png;base64,' in page
    assert 4e6 < path.stat().st_size < 12e6  # plotly.js (~4.8 MB) and the figures


def test_long_runs_are_animated_with_at_most_25_evenly_spaced_steps():
    from diffviz.viz.html_report import _frame_steps

    assert _frame_steps(25) is None
    frames = _frame_steps(50)
    assert len(frames) == 25 and frames[0] == 0 and frames[-1] == 49
    assert max(b - a for a, b in pairwise(frames)) <= 3


def test_report_escapes_the_prompt_and_skips_guidance_without_it(tr, tmp_path):
    odd = dataclasses.replace(tr, prompt="<script>alert(1)</script> red", noise_uncond=None)
    page = diffviz.report(odd, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; red" in page
    assert len(figure_ids(page)) == 6 and "What guidance does" not in page


def test_a_prompt_of_58_distinct_words_gets_a_report(sd_pipe, tmp_path):
    """Up to 75 words fit CLIP's context; the word grid pages them 16 at a time."""
    from diffviz.testing import WORDS

    prompt = " ".join(WORDS + list("bcdefghijklmnopqrstuvwxyz0123456789")[:58 - len(WORDS)])
    with diffviz.trace(sd_pipe) as long:
        sd_pipe(prompt, num_inference_steps=2, height=64, width=64)
    assert len(set(long.words)) == 58
    page = diffviz.report(long, tmp_path / "long.html").read_text(encoding="utf-8")
    assert len(figure_ids(page)) == 7 and re.search(r"words 49(–|\\u2013)58 of 58", page)


def test_a_classroom_report_shows_the_judges_verdict(tmp_path):
    """The judge reads the trace's image (here drawn scenes, one swapping the asked shapes); the report
    shows what it is handed (`notes`) and knows no judge itself; `diffviz report --judge` and `explain` on
    the classroom model hand it the verdict."""
    import numpy as np
    import torch

    from diffviz.classroom import data
    from diffviz.classroom.judge import describe

    pipe = diffviz.classroom.load_pipeline()
    with diffviz.trace(pipe) as run:
        pipe(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    tr = run.trace
    side = tr.height
    objects = [data.Obj("square", "red", "large"), data.Obj("circle", "blue", "large")]
    scene = data.make_scene(objects, "left of", np.random.default_rng(0), image_size=side)
    swapped = dataclasses.replace(tr, image=torch.from_numpy(scene.image))
    verdict = describe(PROMPT, scene.image)
    assert verdict == f"✗ drawn: a red square left of a blue circle; asked: {PROMPT}"
    page = diffviz.report(swapped, tmp_path / "v.html", notes={"judge": verdict}).read_text(encoding="utf-8")
    assert f"<td>judge</td><td>{verdict}</td>" in page
    objects = [data.Obj("circle", "red", "small"), data.Obj("square", "blue", "large")]
    scene = data.make_scene(objects, "left of", np.random.default_rng(0), image_size=side)
    assert describe(PROMPT, scene.image) == f"✓ drawn as asked: {PROMPT}"
    assert describe("a cat on a mat", scene.image) is None  # outside the classroom grammar
    plain = diffviz.report(swapped, tmp_path / "o.html")
    assert "<td>judge</td>" not in plain.read_text(encoding="utf-8")
    swapped.save(tmp_path / "v.dvz")
    assert main(["report", str(tmp_path / "v.dvz"), "--judge", "-q"]) == 0
    assert f"<td>judge</td><td>{verdict}</td>" in (tmp_path / "v.html").read_text(encoding="utf-8")
    assert main(["explain", PROMPT, "--steps", "2", "-q", "--out", str(tmp_path / "e.html")]) == 0
    assert "<td>judge</td><td>" in (tmp_path / "e.html").read_text(encoding="utf-8")


def test_explain_generates_traces_and_reports(model_dir, tmp_path, capsys):
    out = tmp_path / "run.html"
    rc = main(["explain", PROMPT, "--model", str(model_dir), "--steps", "3", "--seed", "2", "--guidance", "5",
               "--scheduler", "euler", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"trace:  {tmp_path / 'run.dvz'}" in printed and f"report: {out}" in printed
    t = diffviz.load_trace(tmp_path / "run.dvz")
    assert (t.prompt, t.num_steps, t.guidance_scale) == (PROMPT, 3, 5.0)
    assert t.scheduler["name"] == "EulerDiscreteScheduler"
    assert len(figure_ids(out.read_text(encoding="utf-8"))) == 7


def test_explain_uses_the_classroom_model_by_default(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_classroom(**kwargs):
        calls.append(1)
        return tiny_pipeline("sd", "ddim")

    monkeypatch.setattr(diffviz.classroom, "load_pipeline", fake_classroom)
    monkeypatch.delenv("DIFFVIZ_MODEL", raising=False)
    rc = main(["explain", "a blue square", "--steps", "1", "--out", str(tmp_path / "c.html"),
               "--trace", str(tmp_path / "c.dvz")])
    assert rc == 0 and calls == [1]
    assert diffviz.load_trace(tmp_path / "c.dvz").prompt == "a blue square"


def test_explain_reads_the_model_folder_from_diffviz_model(model_dir, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DIFFVIZ_MODEL", str(model_dir))
    assert main(["explain", "a red square", "--steps", "1", "--out", str(tmp_path / "m.html")]) == 0
    assert f"loading {model_dir}" in capsys.readouterr().err


def test_report_command_rebuilds_a_report_from_a_trace_file(tr, tmp_path, capsys):
    saved = tr.save(tmp_path / "t.dvz")
    assert main(["report", str(saved)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {tmp_path / 't.html'}"
    assert len(figure_ids((tmp_path / "t.html").read_text(encoding="utf-8"))) == 7


@pytest.mark.parametrize("argv, message", [
    (["explain", "a cat", "--steps", "0"], "--steps must be between 1 and 1000, not 0"),
    (["explain", "a cat", "--guidance", "-1"], "--guidance must be between 0 and 100"),
    (["explain", "a cat", "--seed", "-3"], "--seed must be between 0 and"),
    (["explain", "  "], "the prompt is empty"),
    (["explain", "a cat", "--scheduler", "heun"], "invalid choice: 'heun' (choose from ddim, euler, dpm)"),
    (["explain", "a cat", "--out", "x.dvz"], "--trace and --out are the same file"),
    (["report", "run.html"], "--out would overwrite the trace file"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_arguments_exit_2_naming_the_value(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.replace("'ddim', 'euler', 'dpm'", "ddim, euler, dpm")
    assert message in err


def test_missing_files_exit_1_with_a_message(tmp_path, capsys):
    assert main(["explain", "a cat", "--model", str(tmp_path / "nope")]) == 1
    assert "diffviz: error: no model folder at" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope.dvz")]) == 1
    assert "diffviz: error: no trace file at" in capsys.readouterr().err
    (tmp_path / "bad.dvz").write_bytes(b"not a trace")
    assert main(["report", str(tmp_path / "bad.dvz")]) == 1
    assert "is not a readable trace file" in capsys.readouterr().err


def test_console_script_is_installed():
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name="diffviz")
    assert entry.value == "diffviz.cli:main" and entry.load() is main
    assert (Path(sys.executable).parent / "diffviz").is_file()


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["explain", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for option in ("--model", "--steps", "--seed", "--guidance", "--scheduler", "--out", "--trace"):
        assert option in out
