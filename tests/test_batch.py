"""Many prompts: the summary format, `diffviz batch` (resume, a failing item, two processes under torchrun)
and `diffviz.study`, on the tiny SD pipeline and the classroom model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import diffviz
from diffviz import batch
from diffviz.classroom.judge import judge
from diffviz.cli import main
from diffviz.io import TraceFileError
from diffviz.summary import SUFFIX, estimate_bytes, load_summary, summarize

PAIR = "a blue square above a yellow circle"
SINGLE = "a small green triangle"


@pytest.fixture(scope="module")
def classroom():
    return diffviz.classroom.load_pipeline()


def traced_image(pipe, prompt: str, seed: int, steps: int):
    with diffviz.trace(pipe) as tr:
        pipe(prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))
    return tr


# ---- the summary format ---------------------------------------------------------------------------
def test_summary_round_trip_matches_the_trace(traced, tmp_path):
    _, tr = traced
    s = summarize(tr, windows=3)
    assert s.windows == [(0, 1), (1, 3), (3, 4)] and s.words == tr.words
    assert {r: tuple(m.shape) for r, m in s.maps.items()} == {
        l.resolution: (3, len(tr.words), *l.size) for l in tr.layers}
    path = s.save(tmp_path / f"a{SUFFIX}")
    back = load_summary(path)
    assert back.words == s.words and back.windows == s.windows and back.layer_counts == s.layer_counts
    for name in ("timesteps", "x0", "image", "preview_weight"):
        assert torch.equal(getattr(back, name), getattr(s, name)), name
    assert all(torch.equal(back.maps[r], s.maps[r]) for r in s.maps)  # exactly what was summarised
    # the stored maps give the trace's own heat maps, per window and over all steps
    for window, steps in [(None, None), (0, [0]), (1, [1, 2]), (2, [3])]:
        for word in ["red", "square", 1]:
            expected = tr.word_heatmap(word, steps=steps)
            assert torch.allclose(back.heatmap(word, window=window), expected, atol=1e-2), (window, word)
    assert (back.preview().int() - tr.preview(-1).int()).abs().max() <= 2  # x0 kept in float16
    assert path.stat().st_size < 0.2 * tr.save(tmp_path / "a.dvz").stat().st_size


def test_summary_size_estimate_and_shrunk_image(traced, tmp_path):
    _, tr = traced
    s = summarize(tr, windows=2, max_image_side=16)
    assert tuple(s.image.shape) == (16, 16, 3) and (s.height, s.width) == (64, 64)
    assert s.heatmap("red").shape == (64, 64)
    sizes = [l.size for l in tr.layers]
    assert s.nbytes == estimate_bytes(len(tr.words), list(dict.fromkeys(sizes)), tuple(tr.x0.shape[1:]),
                                      (64, 64), tr.num_steps, windows=2, max_image_side=16)
    assert 0 < s.save(tmp_path / "s.dvs").stat().st_size - s.nbytes < 8000  # the JSON header


def test_summary_over_its_byte_budget_keeps_maps_at_4_bits(traced, tmp_path):
    _, tr = traced
    full = summarize(tr)
    assert full.bits == 8
    budget = full.nbytes - 1  # 8-bit maps no longer fit
    s = summarize(tr, max_bytes=budget)
    assert s.bits == 4 and s.nbytes <= budget
    sizes = list(dict.fromkeys(l.size for l in tr.layers))
    assert s.nbytes == estimate_bytes(len(tr.words), sizes, tuple(tr.x0.shape[1:]), (64, 64), tr.num_steps,
                                      bits=4)
    back = load_summary(s.save(tmp_path / "s4.dvs"))
    assert back.bits == 4 and all(torch.equal(back.maps[r], s.maps[r]) for r in s.maps)
    for r in s.maps:  # half a 4-bit level plus half an 8-bit one of each map's max
        err = (back.maps[r] - full.maps[r]).abs().amax(dim=(-2, -1))
        assert bool((err <= full.maps[r].amax(dim=(-2, -1)) * (1 / 30 + 1 / 510) + 1e-7).all())
    with pytest.warns(UserWarning, match="over max_bytes=0.00 MB"):
        assert summarize(tr, max_bytes=10).bits == 4


def test_summary_files_are_checked_and_told_apart_from_traces(traced, tmp_path):
    _, tr = traced
    path = summarize(tr).save(tmp_path / "a.dvs")
    with pytest.raises(TraceFileError, match="'diffviz-summary' file.*diffviz.load_summary"):
        diffviz.load_trace(path)
    with pytest.raises(TraceFileError, match="'diffviz-trace' file.*diffviz.load_trace"):
        load_summary(tr.save(tmp_path / "a.dvz"))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit in the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(TraceFileError, match="changed or damaged"):
        load_summary(path)
    with pytest.raises(ValueError, match=r"step window \(2, 9\) is not inside the 4 steps"):
        summarize(tr, windows=[(2, 9)])


# ---- prompt files -----------------------------------------------------------------------------------
def test_prompt_files_text_csv_and_jsonl(tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\n\n  a blue square  \n")
    items = batch.read_prompts(tmp_path / "p.txt", seed=5, steps=7)
    assert [(i.id, i.prompt, i.seed, i.steps) for i in items] == [("000000", "a red circle", 5, 7),
                                                                   ("000001", "a blue square", 5, 7)]
    (tmp_path / "p.csv").write_text('prompt,seed,guidance\n"a red circle, small",3,\na blue square,,2.5\n')
    items = batch.read_prompts(tmp_path / "p.csv")
    assert [(i.prompt, i.seed, i.guidance) for i in items] == [("a red circle, small", 3, 7.5),
                                                                ("a blue square", 0, 2.5)]
    row = {"prompt": "a cat", "negative_prompt": "a dog", "steps": 4}
    (tmp_path / "p.jsonl").write_text(json.dumps(row) + "\n")
    assert batch.read_prompts(tmp_path / "p.jsonl")[0].negative_prompt == "a dog"
    (tmp_path / "bad.csv").write_text("text\na red circle\n")
    with pytest.raises(batch.BatchError, match="no 'prompt' column"):
        batch.read_prompts(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("prompt,seed\na red circle,three\n")
    with pytest.raises(batch.BatchError, match=r"bad2.csv:2: seed 'three' is not an integer"):
        batch.read_prompts(tmp_path / "bad2.csv")
    (tmp_path / "big.jsonl").write_text(json.dumps({"prompt": "a cat", "seed": 2**64}) + "\n")
    with pytest.raises(batch.BatchError, match=rf"big.jsonl:1: seed must be between 0 and {2**64 - 1}, not"):
        batch.read_prompts(tmp_path / "big.jsonl")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(batch.BatchError, match="holds no prompts"):
        batch.read_prompts(tmp_path / "empty.txt")


def test_launch_environment(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert batch.launch_env() == (0, 1, 0)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(batch.BatchError, match="RANK=2 is not in 0..WORLD_SIZE-1"):
        batch.launch_env()


# ---- running a batch ----------------------------------------------------------------------------------
def test_one_failing_item_is_recorded_and_the_others_go_on(classroom, tmp_path, monkeypatch):
    items = batch.read_prompts(_prompts(tmp_path, [PAIR, SINGLE, "a red circle"]), steps=3)
    monkeypatch.setattr(batch, "CHUNK_ROWS", 2)  # index part files of two rows

    def out_of_memory(module, args):  # a real pipeline, failing on one prompt as a GPU out of memory would
        if classroom.tokenizer.decode(args[0][0]).count("green"):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    hook = classroom.text_encoder.register_forward_pre_hook(out_of_memory)
    try:
        result = batch.run(items, tmp_path / "out", classroom, progress=False)
    finally:
        hook.remove()
    assert (result.ran, result.errors) == (3, 1)
    assert _parts(tmp_path / "out") == {"part-r00000-00000.parquet": 2, "part-r00000-00001.parquet": 1}
    index = pd.read_parquet(tmp_path / "out" / "index.parquet")
    assert list(index["status"]) == ["ok", "error", "ok"]
    assert index.loc[1, "error"] == "OutOfMemoryError: CUDA out of memory (simulated)"
    assert pd.isna(index.loc[1, "file"]) and not (tmp_path / "out" / "items" / "000001.dvs").exists()
    # the item after the failure is the image a clean run gives: the pipeline was restored
    clean = traced_image(classroom, "a red circle", 0, 3)
    assert torch.equal(load_summary(tmp_path / "out" / "items" / "000002.dvs").image, clean.image)
    assert index.loc[2, "words"].tolist() == ["a", "red", "circle"] and index.loc[2, "bytes"] > 0
    # a second run tries the failed item again and skips the rest
    again = batch.run(items, tmp_path / "out", classroom, progress=False)
    assert (again.ran, again.skipped, again.errors) == (1, 2, 0)
    assert _parts(tmp_path / "out")["part-r00000-00002.parquet"] == 1  # a new part; the old ones kept
    assert list(pd.read_parquet(tmp_path / "out" / "index.parquet")["status"]) == ["ok"] * 3


def test_resume_after_an_interruption_loses_only_the_item_in_flight(classroom, tmp_path):
    path = _prompts(tmp_path, [PAIR, SINGLE, "a red circle"])
    out = tmp_path / "out"
    calls = []

    def interrupt_second(module, args):
        calls.append(1)
        if len(calls) == 3:  # item 0 encodes prompt and negative prompt; item 1's first encoding: Ctrl-C
            raise KeyboardInterrupt

    hook = classroom.text_encoder.register_forward_pre_hook(interrupt_second)
    try:
        with pytest.raises(KeyboardInterrupt):
            batch.run(path, out, classroom, steps=3, progress=False)
    finally:
        hook.remove()
    assert sorted(p.name for p in (out / "items").iterdir()) == ["000000.dvs"]  # no temporary files left
    assert list(batch.read_index(out)["id"]) == ["000000"]
    first = (out / "items" / "000000.dvs").stat().st_mtime_ns
    result = batch.run(path, out, classroom, steps=3, progress=False)
    assert (result.ran, result.skipped) == (2, 1)
    assert (out / "items" / "000000.dvs").stat().st_mtime_ns == first  # not written again
    assert batch.run(path, out, classroom, steps=3, progress=False).ran == 0
    # an item whose prompt or settings changed is not done
    _prompts(tmp_path, [PAIR, "a large green triangle", "a red circle"])
    assert batch.run(path, out, classroom, steps=3, progress=False).ran == 1
    assert batch.run(path, out, classroom, steps=4, progress=False).ran == 3
    index = pd.read_parquet(out / "index.parquet")
    assert list(index["prompt"]) == [PAIR, "a large green triangle", "a red circle"]
    assert list(index["steps"]) == [4, 4, 4]


@pytest.mark.slow
def test_two_processes_under_torchrun_shard_and_merge(classroom, tmp_path):
    prompts = [PAIR, SINGLE, "a red circle", "a large blue square", "a yellow circle left of a red square"]
    path = _prompts(tmp_path, prompts)
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(diffviz.__file__).parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "diffviz", "batch", str(path), "--out", str(tmp_path / "out"), "--steps", "2", "--seed", "7"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0: 3 items run" in done.stderr and "rank 1: 2 items run" in done.stderr
    parts = sorted(p.name for p in (tmp_path / "out" / "index").iterdir())
    assert parts == ["part-r00000-00000.parquet", "part-r00001-00000.parquet"]
    index = pd.read_parquet(tmp_path / "out" / "index.parquet")
    assert list(index["id"]) == [f"{i:06d}" for i in range(5)] and list(index["prompt"]) == prompts
    assert list(index["rank"]) == [0, 1, 0, 1, 0] and set(index["status"]) == {"ok"}
    # each process made the image one process makes
    for i in (0, 3):
        alone = traced_image(classroom, prompts[i], 7, 2)
        assert torch.equal(load_summary(tmp_path / "out" / index.loc[i, "file"]).image, alone.image)


# ---- the study ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def studied(classroom, tmp_path_factory):
    """A batch of two classroom prompts and one outside the grammar (12 steps, seed 1), kept as summaries."""
    tmp = tmp_path_factory.mktemp("study")
    path = _prompts(tmp, [PAIR, SINGLE, "a cat"])
    batch.run(path, tmp / "out", classroom, steps=12, seed=1, progress=False)
    return tmp / "out", diffviz.study(tmp / "out", grader=diffviz.classroom.grader)


def test_a_study_without_a_grader_has_the_metrics_and_no_judge(studied):
    """diffviz.study knows no grammar of its own: without a grader there are no word classes, verdicts or
    IoU (the classroom judge is the grader's, passed in), and the study report still draws."""
    from diffviz.viz.study import study_report

    path, graded = studied
    df = diffviz.study(path)
    assert list(df["word"]) == list(graded["word"])
    assert not {"word_class", "correct", "relation", "iou"} & set(df.columns)
    assert np.allclose(df["share"], graded["share"])
    assert study_report(df, path / "plain.html").stat().st_size > 1000


def test_study_has_a_row_per_item_and_word_with_the_metrics(studied):
    _, df = studied
    assert list(zip(df["id"], df["word"])) == [("000000", w) for w in PAIR.split()] + [
        ("000001", w) for w in SINGLE.split()] + [("000002", "a"), ("000002", "cat")]
    classes = ["article", "colour", "shape", "relation", "article", "colour", "shape"]
    assert list(df["word_class"][:7]) == classes
    assert df.loc[8, "word_class"] == "size" and df.loc[11, "word_class"] == "article"
    assert pd.isna(df.loc[12, "word_class"])  # "cat": not a classroom word
    windows = ["", "_w0", "_w1", "_w2"]
    for m in ("share", "entropy", "centroid_x", "centroid_y", "spread", "peak", "iou"):
        assert all(f"{m}{w}" in df for w in windows), m
    assert df.attrs["windows"] == {"w0": [(0, 4)], "w1": [(4, 8)], "w2": [(8, 12)]}
    for w in windows:
        assert np.allclose(df.groupby("id")[f"share{w}"].sum(), 100)
        assert df[f"entropy{w}"].between(0, 1).all() and (df[f"peak{w}"] >= 1).all()
        assert df[f"centroid_x{w}"].between(0, 1).all() and df[f"spread{w}"].between(0, 1).all()
    # iou only where a word has an object, never for "a cat" (outside the classroom grammar)
    assert df.loc[df["word_class"].isin(["article", "relation"]), "iou"].isna().all()
    assert df.loc[df["id"] == "000002", ["iou", "relation", "correct"]].isna().all().all()


def test_study_iou_and_judge_columns_match_the_trace(classroom, studied):
    _, df = studied
    found = 0
    for item, prompt, objects in [("000000", PAIR, [(1, 0), (2, 0), (5, 1), (6, 1)]),
                                  ("000001", SINGLE, [(1, 0), (2, 0), (3, 0)])]:
        tr = traced_image(classroom, prompt, 1, 12)
        verdict = judge(prompt, tr.image.numpy())
        rows = df[df["id"] == item]
        assert rows["correct"].iloc[0] == verdict["correct"]
        assert rows["relation_ok"].iloc[0] == verdict["relation_ok"] or verdict["relation_ok"] is None
        for wi, obj in objects:  # (word index, its object)
            if verdict["matched"][obj] is None:
                assert np.isnan(rows["iou"].iloc[wi])
                continue
            mask = verdict["matched"][obj].mask
            for col, steps in [("iou", None), ("iou_w2", slice(8, 12))]:
                heat = tr.word_heatmap(wi, steps=steps).numpy()
                hit = heat >= 0.4 * heat.max()
                assert rows[col].iloc[wi] == pytest.approx((hit & mask).sum() / (hit | mask).sum(), abs=0.03)
            found += 1
    assert df.loc[df["id"] == "000000", "relation"].iloc[0] == "above"
    assert found >= 2  # the judge found at least one object: the comparison ran


def test_study_reads_full_traces_as_summaries(classroom, studied, tmp_path):
    _, df = studied
    path = _prompts(tmp_path, [PAIR])
    batch.run(path, tmp_path / "full", classroom, keep="full", steps=12, seed=1, progress=False)
    assert (tmp_path / "full" / "items" / "000000.dvz").is_file()
    full = diffviz.study(tmp_path / "full")
    summary = df[df["id"] == "000000"].reset_index(drop=True)
    cols = [c for c in full.columns if c.startswith(("share", "spread", "entropy"))]
    assert np.allclose(full[cols].to_numpy(float), summary[cols].to_numpy(float), atol=1e-2)


# ---- the command ------------------------------------------------------------------------------------
def test_cli_batch_and_study_report(studied, tmp_path, capsys):
    folder, _ = studied
    assert main(["study", str(folder), "--out", str(tmp_path / "s.html")]) == 0
    page = (tmp_path / "s.html").read_text(encoding="utf-8")
    assert "plotly.js v" in page and page.count('class="plotly-graph-div"') == 5
    assert "Does each word look at its object?" in page and "Relations" in page
    capsys.readouterr()
    prompts = _prompts(tmp_path, ["a red circle"])
    assert main(["batch", str(prompts), "--out", str(tmp_path / "o"), "--steps", "2", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out == f"index: {(tmp_path / 'o' / 'index.parquet').resolve()}\n" and err == ""
    assert main(["batch", str(prompts), "--out", str(tmp_path / "o"), "--steps", "2"]) == 0
    assert "rank 0: 0 items run, 1 already done, 0 failed" in capsys.readouterr().err
    biggest = 2**64 - 1  # the largest seed torch takes, past int64
    assert main(["batch", str(prompts), "--out", str(tmp_path / "big"), "--steps", "2", "-q",
                 "--seed", str(biggest), "--scheduler", "euler"]) == 0
    assert pd.read_parquet(tmp_path / "big" / "index.parquet")["seed"].tolist() == [biggest]
    assert main(["batch", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")]) == 1
    assert "no prompt file at" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["batch", str(tmp_path / "p.txt"), "--out", str(tmp_path / "o"), "--windows", "0"])
    assert exit_.value.code == 2


def _parts(out: Path) -> dict[str, int]:
    return {p.name: len(pd.read_parquet(p)) for p in sorted((out / "index").iterdir())}


def _prompts(folder: Path, prompts: list[str]) -> Path:
    path = folder / "prompts.txt"
    path.write_text("\n".join(prompts) + "\n")
    return path
