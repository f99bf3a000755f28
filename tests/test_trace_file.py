"""Trace files: exact round trip, and clear refusals of damaged, foreign or future files."""

from __future__ import annotations

import json
import struct

import pytest
import torch

import diffviz
from diffviz import TraceFileError, load_trace


def test_round_trip_is_exact(traced, tmp_path):
    _, tr = traced
    path = tr.save(tmp_path / "run.dvz")
    again = load_trace(path)
    for field in ("prompt", "negative_prompt", "words", "tokens", "layers", "height", "width",
                  "guidance_scale", "model", "scheduler", "options"):
        assert getattr(again, field) == getattr(tr, field), field
    for field in ("timesteps", "alpha_bar", "sigma", "latents", "x0", "noise_cond", "noise_uncond", "image",
                  "preview_weight"):
        a, b = getattr(again, field), getattr(tr, field)
        assert a.dtype == b.dtype and torch.equal(a, b), field
    assert again.attn.keys() == tr.attn.keys()
    assert all(torch.equal(again.attn[k], tr.attn[k]) for k in tr.attn)
    assert torch.equal(again.word_heatmap("red"), tr.word_heatmap("red"))
    assert [l.name for l in again.layers] == [l.name for l in tr.layers]


def test_metadata_is_json_with_a_format_version(traced, tmp_path):
    _, tr = traced
    path = tr.save(tmp_path / "run.dvz")
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    meta = json.loads(json.loads(path.read_bytes()[8:8 + header_len])["__metadata__"]["diffviz"])
    assert meta["format"] == "diffviz-trace" and meta["format_version"] == diffviz.io.FORMAT_VERSION == 3
    assert meta["diffviz_version"] == diffviz.__version__ and meta["prompt"] == tr.prompt
    assert (meta["model"]["config_sha256"] and meta["model"]["family"] == "sd"
            and meta["scheduler"]["name"] == "DDIMScheduler")


def test_truncated_file_is_refused(traced, tmp_path):
    _, tr = traced
    path = tr.save(tmp_path / "run.dvz")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(TraceFileError, match="not a readable trace file"):
        load_trace(path)


def test_tampered_tensor_is_refused(traced, tmp_path):
    _, tr = traced
    path = tr.save(tmp_path / "run.dvz")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # flip bits in the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(TraceFileError, match="changed or damaged"):
        load_trace(path)


def _rewrite_meta(path, change):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["diffviz"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (a safe_open handle is not iterable)
    change(meta)
    save_file(tensors, str(path), metadata={"diffviz": json.dumps(meta)})


def test_unknown_format_version_is_refused(traced, tmp_path):
    _, tr = traced
    path = tr.save(tmp_path / "run.dvz")
    _rewrite_meta(path, lambda m: m.update(format_version=99))
    with pytest.raises(TraceFileError, match="format version 99.*reads version 2"):
        load_trace(path)


def test_foreign_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(TraceFileError, match="not a diffviz trace"):
        load_trace(tmp_path / "model.safetensors")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(TraceFileError, match="not a readable trace file"):
        load_trace(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="no trace file"):
        load_trace(tmp_path / "missing.dvz")


def test_a_failed_save_leaves_the_old_file_intact(traced, tmp_path, monkeypatch):
    _, tr = traced
    path = tr.save(tmp_path / "run.dvz")
    good = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("diffviz.io.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        tr.save(path)
    assert path.read_bytes() == good and list(tmp_path.iterdir()) == [path]


def test_an_empty_trace_cannot_be_saved(sd_pipe, tmp_path):
    with diffviz.trace(sd_pipe) as tr:
        pass
    with pytest.raises(diffviz.CaptureError, match="empty.*no generation has run"):
        tr.save(tmp_path / "x.dvz")


def _header_edit(path, old: bytes, new: bytes) -> None:
    """Edit the file's JSON header in place, as a text editor would (same length: still valid safetensors)."""
    data = path.read_bytes()
    n = 8 + struct.unpack("<Q", data[:8])[0]
    assert len(old) == len(new) and old in data[:n]
    path.write_bytes(data[:n].replace(old, new) + data[n:])


@pytest.mark.parametrize("old, new", [(b"red", b"tan"), (b"DDIMScheduler", b"PNDMScheduler")])
def test_an_edited_header_is_refused(traced, tmp_path, old, new):
    _, tr = traced
    path = tr.save(tmp_path / "run.dvz")
    _header_edit(path, old, new)
    with pytest.raises(TraceFileError, match="changed or damaged"):
        load_trace(path)


def test_a_folder_is_named_as_a_folder(traced, tmp_path):
    _, tr = traced
    tr.save(tmp_path / "run.dvz")
    with pytest.raises(TraceFileError, match="is a folder.*e.g. 'run.dvz'"):
        load_trace(tmp_path)


@pytest.fixture(scope="module")
def saved_bytes(traced, tmp_path_factory):
    return traced[1].save(tmp_path_factory.mktemp("fuzz") / "run.dvz").read_bytes()


def test_damaged_files_raise_only_trace_file_error(saved_bytes, tmp_path_factory):
    """Hypothesis fuzz (a few hundred cases, fixed seed): truncated, bit-flipped, spliced and
    header-edited copies of a real trace are refused with TraceFileError or load intact, never another
    error."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    folder = tmp_path_factory.mktemp("fuzzed")
    header_end = 8 + struct.unpack("<Q", saved_bytes[:8])[0]
    anywhere = st.integers(0, len(saved_bytes) - 1)
    in_header = st.integers(0, header_end - 1)
    edits = st.lists(st.tuples(st.one_of(in_header, anywhere), st.integers(0, 255)), min_size=1, max_size=4)

    @settings(max_examples=300, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(cut=st.one_of(st.none(), anywhere), edits=edits, splice=st.booleans(), junk=st.binary(max_size=16))
    def check(cut, edits, splice, junk):
        data = bytearray(saved_bytes)
        for pos, value in edits:
            data[pos] = value
        if splice:
            data[edits[0][0]:edits[0][0]] = junk
        if cut is not None:
            data = data[:cut]
        path = folder / "f.dvz"
        path.write_bytes(bytes(data))
        try:
            load_trace(path)
        except TraceFileError:
            return
        # it loaded: then nothing that matters changed (at most JSON whitespace in the header)
        assert data[header_end:] == saved_bytes[header_end:]
        assert json.loads(data[8:header_end]) == json.loads(saved_bytes[8:header_end])

    check()
