"""The ``diffviz`` command on bad input and interruptions: errors before any work, no mismatched files,
quiet output, the classroom model's unknown words."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import diffviz
import diffviz.classroom
import diffviz.viz
from diffviz.cli import main
from diffviz.testing import tiny_pipeline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny"
    tiny_pipeline("sd", "ddim").save_pretrained(path)
    return path


@pytest.fixture
def no_model(monkeypatch):
    """The classroom loader replaced by one that records calls: an argument error must come before it."""
    calls = []
    monkeypatch.setattr(diffviz.classroom, "load_pipeline", lambda **kw: calls.append(kw) or tiny_pipeline())
    monkeypatch.delenv("DIFFVIZ_MODEL", raising=False)
    return calls


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"diffviz {diffviz.__version__}"


@pytest.mark.parametrize("seed", ["99999999999999999999", "-3"])
def test_seed_out_of_range_prints_the_subcommand_usage(seed, capsys, no_model):
    with pytest.raises(SystemExit) as exit_:
        main(["explain", "a red circle", "--seed", seed])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and not no_model
    assert f"--seed must be between 0 and {2**64 - 1}, not {seed}" in err
    assert err.startswith("usage: diffviz explain")


def test_an_unwritable_output_folder_fails_before_generating(tmp_path, capsys, no_model):
    (tmp_path / "file").write_text("x")
    assert main(["explain", "a red circle", "--out", str(tmp_path / "file" / "run.html")]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err and not no_model
    assert main(["explain", "a red circle", "--out", str(tmp_path)]) == 1
    assert "is a folder; give a file name" in capsys.readouterr().err and not no_model
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main(["explain", "a red circle", "--out", str(locked / "run.html")]) == 1
        assert "is not writable" in capsys.readouterr().err and not no_model


def test_model_paths_that_are_not_pipeline_folders(model_dir, tmp_path, capsys):
    single = tmp_path / "sd15.safetensors"
    single.write_bytes(b"\0" * 16)
    assert main(["explain", "a red circle", "--model", str(single)]) == 1
    err = capsys.readouterr().err
    assert "is a single-file checkpoint, not a diffusers pipeline folder" in err and "from_single_file" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text((model_dir / "model_index.json").read_text())
    (broken / "scheduler").mkdir()
    assert main(["explain", "a red circle", "--model", str(broken)]) == 1
    err = capsys.readouterr().err
    assert "has model_index.json but lacks the component folder(s)" in err and "unet/" in err
    assert "scheduler/" not in err.split("folder(s)")[1] and "Traceback" not in err


def test_a_folder_given_as_the_trace(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    assert f"{str(tmp_path)!r} is a folder; give the path of a trace file" in capsys.readouterr().err


@pytest.mark.parametrize("failure", [RuntimeError("plotly broke"), KeyboardInterrupt()])
def test_a_failed_report_leaves_the_previous_pair_untouched(failure, model_dir, tmp_path, monkeypatch,
                                                           capsys):
    out = tmp_path / "run.html"
    argv = ["explain", "a red circle", "--model", str(model_dir), "--steps", "2", "--out", str(out)]
    assert main(argv) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["run.dvz", "run.html"]

    def broken(*args, **kwargs):
        raise failure

    monkeypatch.setattr(diffviz.viz, "report", broken)
    argv[1] = "a blue square"
    if isinstance(failure, KeyboardInterrupt):
        assert main(argv) == 130
    else:
        with pytest.raises(RuntimeError, match="plotly broke"):
            main(argv)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no new trace, no temporaries


def test_the_generator_is_seeded_on_the_cpu(model_dir, tmp_path, monkeypatch):
    """As edits and the README seed it: on a GPU the same seed must give the same noise as in Python."""
    seen = []
    pipe = diffviz.load_pipeline(model_dir, device="cpu")

    class OnAGpu(type(pipe)):  # reports a CUDA device, runs on the CPU
        device = property(lambda self: torch.device("cuda"))
        _execution_device = property(lambda self: torch.device("cpu"))

        def __call__(self, *args, generator=None, **kwargs):
            seen.append(generator.device.type)
            return super().__call__(*args, generator=generator, **kwargs)

    pipe.__class__ = OnAGpu
    monkeypatch.setattr(diffviz, "load_pipeline", lambda model, **kwargs: pipe)
    assert main(["explain", "a red circle", "--model", str(model_dir), "--steps", "2",
                 "--out", str(tmp_path / "g.html")]) == 0
    assert seen == ["cpu"]


def test_unknown_characters_reach_the_trace_and_the_cli_names_unknown_words(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DIFFVIZ_MODEL", raising=False)
    assert main(["explain", "a red 🔴 circle — café", "--steps", "2", "--out", str(tmp_path / "u.html")]) == 0
    err = capsys.readouterr().err
    assert "never learnt '🔴', '—', 'café'" in err
    tr = diffviz.load_trace(tmp_path / "u.dvz")
    assert tr.words == ["a", "red", "?", "circle", "?", "cafe"] and tr.prompt == "a red ? circle ? cafe"


def _run(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="100")
    return subprocess.run([sys.executable, "-m", "diffviz.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300, check=False)


def test_a_run_prints_one_progress_bar_and_no_library_noise(model_dir, tmp_path):
    """In a fresh process, as a user runs it: library warnings and loading bars would show here."""
    done = _run(["explain", "a red circle", "--model", str(model_dir), "--steps", "2"], tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[0] == f"loading {model_dir}" and lines[1].startswith("generating “a red circle”")
    assert all(line.startswith("denoising") for line in lines[2:]), lines
    assert done.stdout.splitlines()[0].startswith("trace:")
    quiet = _run(["explain", "a red circle", "--model", str(model_dir), "--steps", "2", "--quiet"], tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout.count("\n") == 2
    loud = _run(["report", "run.dvz", "--verbose"], tmp_path)
    assert loud.returncode == 0 and "report:" in loud.stderr  # the report's own progress bar
