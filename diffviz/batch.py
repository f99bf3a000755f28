"""Many prompts through one pipeline: a trace or summary file per item and a Parquet index, resumable
and sharded across the processes that ``torchrun`` or ``accelerate launch`` start.

    DIR/items/000042.dvs           one file per item: a summary (.dvs) or a full trace (.dvz)
    DIR/index/part-r00001-00003.parquet  rows process 1 wrote: up to CHUNK_ROWS a file, the open one
                                   rewritten atomically after every item (so the cost per item stays flat)
    DIR/index.parquet              every row, merged at the end (by rank 0, once every process is done)

An item is *done* when a row with its id, the same prompt and settings and status "ok" exists and its
file is there; a run skips done items and tries failed ones again. Process RANK of WORLD_SIZE (read from
the environment, as the launchers set it) takes items RANK, RANK + WORLD_SIZE, ... of the prompt file.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .extras import require
from .io import atomic_path
from .summary import DEFAULT_WINDOWS, summarize
from .summary import SUFFIX as SUMMARY_SUFFIX

KEEP = {"summary": SUMMARY_SUFFIX, "full": ".dvz"}
INDEX = "index.parquet"
PARTS = "index"
ITEMS = "items"
CHUNK_ROWS = 64  # rows per index part file
BARRIER_TIMEOUT = dt.timedelta(days=3)  # ranks that finish first wait this long for the others at the end


class BatchError(ValueError):
    """A prompt file or launch environment diffviz cannot use; the message says what to change."""


@dataclass(frozen=True)
class Item:
    """One generation of a batch. ``id`` is its position in the prompt file, zero-padded ("000042")."""

    id: str
    prompt: str
    seed: int
    steps: int
    guidance: float
    negative_prompt: str | None = None

    def settings(self) -> tuple:
        return self.prompt, self.negative_prompt, self.seed, self.steps, self.guidance


@dataclass(frozen=True)
class Result:
    """What one process did. ``index``: the merged index (None on ranks other than 0)."""

    ran: int
    skipped: int
    errors: int
    index: Path | None


def read_prompts(path: str | Path, *, seed: int = 0, steps: int = 25, guidance: float = 7.5,
                 negative_prompt: str | None = None) -> list[Item]:
    """Items from a prompt file: text (one prompt a line; blank lines skipped), ``.csv`` or ``.jsonl``
    with a ``prompt`` column and optional ``seed``, ``negative_prompt``, ``steps``, ``guidance``
    (the keyword arguments are the defaults for missing or empty values)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no prompt file at {str(path)!r}: give a text file (one prompt a line), "
                                "or a .csv / .jsonl file with a 'prompt' column.")
    text = path.read_text(encoding="utf-8-sig")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if "prompt" not in (reader.fieldnames or []):
            raise BatchError(f"{path}: the CSV has no 'prompt' column (its header is {reader.fieldnames}); "
                             "name the column of prompts 'prompt'.")
        rows = [(reader.line_num, row) for row in reader]
    elif suffix in (".jsonl", ".ndjson"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise BatchError(f"{path}:{n}: not a JSON object ({err}); write one object a line, e.g. "
                                 '{"prompt": "a red circle", "seed": 3}.') from None
            if not isinstance(row, dict) or "prompt" not in row:
                raise BatchError(f'{path}:{n}: each line needs a "prompt" key, e.g. '
                                 '{"prompt": "a red circle"}.')
            rows.append((n, row))
    else:
        rows = [(n, {"prompt": line}) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    defaults = dict(seed=seed, steps=steps, guidance=guidance, negative_prompt=negative_prompt)
    items = [_item(f"{i:06d}", row, defaults, f"{path}:{n}") for i, (n, row) in enumerate(rows)]
    if not items:
        raise BatchError(f"{path} holds no prompts; write one prompt a line (or CSV/JSONL rows with "
                         "'prompt').")
    return items


def _item(item_id: str, row: dict, defaults: dict, where: str) -> Item:
    def value(key, kind):
        raw = row.get(key)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return defaults[key]
        try:
            return kind(raw) if kind is not int else int(str(raw).strip())
        except (TypeError, ValueError):
            kind_name = "an integer" if kind is int else "a number"
            raise BatchError(f"{where}: {key} {raw!r} is not {kind_name}.") from None

    prompt = str(row.get("prompt") or "").strip()
    if not prompt:
        raise BatchError(f"{where}: the prompt is empty; remove the row or write a prompt.")
    item = Item(item_id, prompt, value("seed", int), value("steps", int), value("guidance", float),
                value("negative_prompt", str))
    if not 0 <= item.seed < 2**64:  # what torch.Generator.manual_seed takes
        raise BatchError(f"{where}: seed must be between 0 and {2**64 - 1}, not {item.seed}.")
    if not 1 <= item.steps <= 1000:
        raise BatchError(f"{where}: steps must be between 1 and 1000, not {item.steps}.")
    if not 0 <= item.guidance <= 100:
        raise BatchError(f"{where}: guidance must be between 0 and 100, not {item.guidance:g}.")
    return item


def launch_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from RANK, WORLD_SIZE and LOCAL_RANK as torchrun and
    ``accelerate launch`` set them; ``(0, 1, 0)`` when they are not set (one process). Read from the
    environment rather than accelerate's PartialState, which reports no distribution on a CPU-only
    torchrun."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise BatchError(f"RANK={os.environ.get('RANK')!r}, WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}, "
                         f"LOCAL_RANK={os.environ.get('LOCAL_RANK')!r} are not all integers; unset them, or "
                         "start the processes with torchrun or accelerate launch.") from None
    if not 0 <= rank < world:
        raise BatchError(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world}); start the processes "
                         "with torchrun or accelerate launch, which set both.")
    return rank, world, local


def require_extra() -> None:
    """An ImportError naming the fix when the 'studies' extra (pandas, pyarrow) is not installed."""
    require("studies", "diffviz batch and diffviz.study", ("pandas", "pyarrow"))


def read_index(out: str | Path):
    """A pandas DataFrame with every row the processes of all runs into ``out`` wrote, the latest row per
    item, sorted by id (what ``DIR/index.parquet`` holds once a run has finished)."""
    require_extra()
    import pandas as pd

    out = Path(out)
    parts = sorted((out / PARTS).glob("part-*.parquet"))
    if not parts:
        if (out / INDEX).is_file():
            return pd.read_parquet(out / INDEX)
        raise FileNotFoundError(f"{str(out)!r} holds no batch index ({INDEX} or {PARTS}/part-*.parquet); "
                                "run `diffviz batch PROMPTS --out DIR` first.")
    rows = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    rows = rows.sort_values("finished", kind="stable").drop_duplicates("id", keep="last")
    return rows.sort_values("id", kind="stable").reset_index(drop=True)


def run(prompts: str | Path | Sequence[Item], out: str | Path, pipe, *, keep: str = "summary",
        windows: int = DEFAULT_WINDOWS, progress: bool = True, **defaults) -> Result:
    """Generate and trace every item of ``prompts`` (a prompt file, see ``read_prompts``, whose keyword
    ``defaults`` seed/steps/guidance/negative_prompt apply, or a list of ``Item``) into ``out``.

    ``pipe``: a pipeline ``diffviz.trace`` supports (under a launcher, load it on GPU LOCAL_RANK).
    ``keep``: "summary" (``diffviz.summary``, ``windows`` step windows) or "full" (the whole trace).
    A failing item gets status "error" with its message and the rest go on; Ctrl-C or a kill loses at
    most the item in flight. Under several processes, each takes its shard and rank 0 merges the index.
    """
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {sorted(KEEP)}, not {keep!r}.")
    require_extra()
    items = list(prompts) if not isinstance(prompts, (str, Path)) else read_prompts(prompts, **defaults)
    out = Path(out)
    rank, world, _ = launch_env()
    with _process_group(world) as group:
        shard = items[rank::world]
        done = _done(out, keep)
        todo = [it for it in shard if done.get(it.id) != it.settings()]
        chunk, rows = _next_chunk(out, rank), []
        errors = 0
        from tqdm.auto import tqdm

        bar = tqdm(total=len(shard), initial=len(shard) - len(todo), unit="item", disable=not progress,
                   desc="batch" if world == 1 else f"batch rank {rank}/{world}",
                   position=rank if world > 1 else None, file=sys.stderr, dynamic_ncols=True)
        with bar:
            for item in todo:
                row = _run_item(pipe, item, out, keep, windows, rank)
                if row["status"] != "ok":
                    errors += 1
                    bar.write(f"diffviz batch: item {item.id} failed: {row['error']}", file=sys.stderr)
                rows.append(row)
                _write_rows(out / PARTS / f"part-r{rank:05d}-{chunk:05d}.parquet", rows)
                if len(rows) == CHUNK_ROWS:
                    chunk, rows = chunk + 1, []
                bar.update(1)
                bar.set_postfix(errors=errors, refresh=False)
        if group is not None:
            group.barrier()
        index = None
        if rank == 0:
            index = out / INDEX
            merged = read_index(out)
            with atomic_path(index) as tmp:
                merged.to_parquet(tmp, index=False)
    return Result(ran=len(todo), skipped=len(shard) - len(todo), errors=errors, index=index)


def _run_item(pipe, item: Item, out: Path, keep: str, windows: int, rank: int) -> dict:
    """Generate ``item`` traced, save its file, and return its index row (status "error" on failure)."""
    import diffviz

    rel = f"{ITEMS}/{item.id}{KEEP[keep]}"
    row = dict(id=item.id, prompt=item.prompt, negative_prompt=item.negative_prompt, seed=item.seed,
               steps=item.steps, guidance=item.guidance, words=None, file=None, bytes=None, seconds=None,
               status="ok", error=None, rank=rank)
    t0 = time.perf_counter()
    try:
        generator = torch.Generator().manual_seed(item.seed)  # on the CPU: the same noise on any device
        with diffviz.trace(pipe) as run:
            pipe(item.prompt, negative_prompt=item.negative_prompt, num_inference_steps=item.steps,
                 guidance_scale=item.guidance, generator=generator)
        tr = run.trace
        path = tr.save(out / rel) if keep == "full" else summarize(tr, windows).save(out / rel)
        row |= dict(words=list(tr.words), file=rel, bytes=path.stat().st_size)
    except Exception as err:  # noqa: BLE001  a bad item (an error, CUDA out of memory) must not stop the rest
        row |= dict(status="error", error=f"{type(err).__name__}: {err}"[:2000])
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    row |= dict(seconds=time.perf_counter() - t0, finished=dt.datetime.now(dt.timezone.utc))
    return row


def _done(out: Path, keep: str) -> dict[str, tuple]:
    """id -> settings of the items already done in ``out`` with this ``keep`` (row "ok", file present)."""
    try:
        rows = read_index(out)
    except FileNotFoundError:
        return {}
    done = {}
    for r in rows.itertuples(index=False):
        kept = isinstance(r.file, str) and r.file.endswith(KEEP[keep]) and (out / r.file).is_file()
        if r.status == "ok" and kept:
            neg = r.negative_prompt if isinstance(r.negative_prompt, str) else None
            done[r.id] = (r.prompt, neg, int(r.seed), int(r.steps), float(r.guidance))
    return done


def _schema():
    import pyarrow as pa

    return pa.schema([
        ("id", pa.string()), ("prompt", pa.string()), ("negative_prompt", pa.string()),
        ("seed", pa.uint64()), ("steps", pa.int64()), ("guidance", pa.float64()),
        ("words", pa.list_(pa.string())), ("file", pa.string()), ("bytes", pa.int64()),
        ("seconds", pa.float64()),
        ("status", pa.string()), ("error", pa.string()), ("rank", pa.int64()),
        ("finished", pa.timestamp("us", tz="UTC")),
    ])


def _next_chunk(out: Path, rank: int) -> int:
    """The number of this rank's first new part file: after every part an earlier run left."""
    done = [int(p.stem.rsplit("-", 1)[1]) for p in (out / PARTS).glob(f"part-r{rank:05d}-*.parquet")]
    return max(done, default=-1) + 1


def _write_rows(part: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=_schema())
    with atomic_path(part) as tmp:
        pq.write_table(table, tmp)


@contextlib.contextmanager
def _process_group(world: int) -> Iterator:
    """torch.distributed (gloo) for the final barrier when several processes run; None for one."""
    if world == 1:
        yield None
        return
    import torch.distributed as dist

    if dist.is_initialized():  # the caller's own group
        yield dist
        return
    if not {"MASTER_ADDR", "MASTER_PORT"} <= set(os.environ):
        raise BatchError(f"WORLD_SIZE is {world} but MASTER_ADDR/MASTER_PORT are not set: start the "
                         "processes with torchrun or accelerate launch, which set them.")
    dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    try:
        yield dist
    finally:
        dist.destroy_process_group()
