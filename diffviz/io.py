"""Trace files (``.dvz``): one safetensors file whose header metadata holds the JSON description.

Loading never unpickles: safetensors holds raw tensors, the rest is JSON. A SHA-256 over every
tensor (name, dtype, shape, bytes) and over the JSON description itself (every field except the
checksum) is stored and checked, so a truncated file, or one edited in its tensors or its header
(a prompt, a scheduler name), is refused with a message rather than read as wrong numbers or words.
Saving writes a temporary file and renames it, so an interrupted save never leaves a half-written trace
under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import __version__
from .traces import Layer, Token, Trace

FORMAT = "diffviz-trace"
FORMAT_VERSION = 3  # 2: the checksum covers the JSON description too; 3: videos (a frame axis, traces.py)
READS = (2, 3)  # versions load_trace opens: a version-2 file is an image trace, laid out as in version 3
_TENSORS = ("timesteps", "alpha_bar", "sigma", "latents", "x0", "noise_cond", "noise_uncond", "image",
            "preview_weight")


class TraceFileError(ValueError):
    """A file that is not a readable diffviz trace; the message says why."""


def _checksum(tensors: dict[str, torch.Tensor], meta: dict) -> str:
    """SHA-256 of the description (canonical JSON, without "sha256") and of every tensor."""
    h = hashlib.sha256()
    described = {k: v for k, v in meta.items() if k != "sha256"}
    h.update(json.dumps(described, sort_keys=True, ensure_ascii=True).encode() + b"|")
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_trace(trace: Trace, path: str | Path) -> Path:
    """Write ``trace`` to ``path`` atomically; returns the path."""
    if trace.num_steps == 0:
        raise ValueError("this trace is empty (no generation ran inside its "
                         "`with diffviz.trace(pipe)` block).")
    path = Path(path)
    tensors = {k: getattr(trace, k) for k in _TENSORS if getattr(trace, k) is not None}
    tensors |= {f"attn/{n}": m for n, m in trace.attn.items()}
    tensors |= {f"attn_uncond/{n}": m for n, m in trace.attn_uncond.items()}
    tensors |= {f"self_attn/{n}": m for n, m in trace.self_attn.items()}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "diffviz_version": __version__,
        "prompt": trace.prompt, "negative_prompt": trace.negative_prompt, "words": trace.words,
        "tokens": [[t.position, t.text, t.word] + ([t.encoder] if t.encoder else []) for t in trace.tokens],
        "layers": [[l.name, list(l.size), l.heads, l.label, l.block] for l in trace.layers],
        "queries": trace.queries,
        "self_layers": [[l.name, list(l.size), l.heads, l.label, l.block] for l in trace.self_layers],
        "height": trace.height, "width": trace.width, "guidance_scale": trace.guidance_scale,
        "model": trace.model, "scheduler": trace.scheduler, "options": trace.options,
    }
    return write_file(path, tensors, meta)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """A temporary file name beside ``path`` to write to; renamed over ``path`` when the block ends,
    removed when it raises. Readers never see a half-written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a saved file is as readable as any file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_file(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write CPU ``tensors`` and the JSON description ``meta`` (plus the SHA-256 of both) as one safetensors
    file, atomically; returns the path. Shared by every file format diffviz writes."""
    meta = {**meta, "sha256": _checksum(tensors, json.loads(json.dumps(meta)))}  # as it will read back
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"diffviz": json.dumps(meta)})
    return Path(path)


def load_trace(path: str | Path) -> Trace:
    """Read a trace written by ``Trace.save``. Raises TraceFileError for a file that is truncated,
    edited, of another format version, or not a trace at all."""
    meta, tensors = read_file(path, FORMAT, READS, "trace")
    try:
        return Trace(
            prompt=meta["prompt"], negative_prompt=meta["negative_prompt"], words=meta["words"],
            tokens=[Token(*t) for t in meta["tokens"]],
            layers=[Layer(n, tuple(s), h, *rest) for n, s, h, *rest in meta["layers"]],
            height=meta["height"], width=meta["width"], guidance_scale=meta["guidance_scale"],
            timesteps=tensors["timesteps"], alpha_bar=tensors["alpha_bar"], sigma=tensors["sigma"],
            latents=tensors["latents"], x0=tensors["x0"], noise_cond=tensors["noise_cond"],
            noise_uncond=tensors.get("noise_uncond"),
            attn={k.removeprefix("attn/"): v for k, v in tensors.items() if k.startswith("attn/")},
            attn_uncond={k.removeprefix("attn_uncond/"): v for k, v in tensors.items()
                         if k.startswith("attn_uncond/")},
            image=tensors.get("image"), preview_weight=tensors.get("preview_weight"),
            model=meta["model"], scheduler=meta["scheduler"], options=meta["options"],
            queries=meta.get("queries", []),
            self_layers=[Layer(n, tuple(s), h, *rest) for n, s, h, *rest in meta.get("self_layers", [])],
            self_attn={k.removeprefix("self_attn/"): v for k, v in tensors.items()
                       if k.startswith("self_attn/")},
        )
    except (KeyError, TypeError, ValueError) as err:  # intact but incomplete: written by another program
        raise TraceFileError(f"{str(path)!r} is missing part of a trace ({type(err).__name__}: {err}); "
                             "it was not written by Trace.save.") from None


def read_file(path: str | Path, fmt: str, fmt_version: int | tuple[int, ...],
              what: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(meta, tensors)`` of a file written by ``write_file`` in format ``fmt`` version ``fmt_version`` (or
    one of several).
    Raises TraceFileError, naming ``what`` ("trace", "summary"), for a folder or a file that is truncated,
    edited, of another format or version, or not a diffviz file at all."""
    path = Path(path)
    if path.is_dir():
        raise TraceFileError(f"{str(path)!r} is a folder; give the path of a {what} file ({_SUFFIXES[fmt]}) "
                             f"inside it{_listing(path, _SUFFIXES[fmt])}.")
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file at {str(path)!r}.")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("diffviz")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    except Exception as err:  # noqa: BLE001 - safetensors reports damage with several exception types
        raise TraceFileError(f"{str(path)!r} is not a readable {what} file (truncated, or not a diffviz "
                             f"{what}): {err}") from None
    if raw is None:
        raise TraceFileError(f"{str(path)!r} is a safetensors file but not a diffviz {what} (no 'diffviz' "
                             "metadata).")
    try:
        meta = json.loads(raw)
    except ValueError as err:  # bad JSON, or a number beyond Python's limits
        raise TraceFileError(f"{str(path)!r} has damaged {what} metadata: {err}") from None
    if not isinstance(meta, dict):
        raise TraceFileError(f"{str(path)!r} has damaged {what} metadata (not a JSON object).")
    version = meta.get("format_version")
    if meta.get("format") in _OPENERS and meta.get("format") != fmt:
        raise TraceFileError(f"{str(path)!r} is a {meta.get('format')!r} file, not a {fmt!r} file; "
                             f"{_OPENERS[meta.get('format')]}.")
    versions = (fmt_version,) if isinstance(fmt_version, int) else fmt_version
    if meta.get("format") != fmt or version not in versions:
        raise TraceFileError(
            f"{str(path)!r} is {what} format version {version!r}; this diffviz ({__version__}) reads version "
            f"{' or '.join(map(str, versions))}. Open it with the diffviz version that wrote it "
            f"({meta.get('diffviz_version')!r})"
            f", or generate the {what} again."
        )
    try:
        intact = _checksum(tensors, meta) == meta.get("sha256")
    except (RuntimeError, TypeError, ValueError):  # e.g. a tensor whose bytes cannot be viewed
        intact = False
    if not intact:
        raise TraceFileError(f"{str(path)!r} has been changed or damaged since it was saved "
                             "(checksum mismatch over its tensors and description); "
                             "regenerate it or restore the original file.")
    return meta, tensors


_OPENERS = {FORMAT: "open it with diffviz.load_trace", "diffviz-summary": "open it with diffviz.load_summary"}
_SUFFIXES = {FORMAT: ".dvz", "diffviz-summary": ".dvs"}


def _listing(folder: Path, suffix: str = ".dvz") -> str:
    """", e.g. 'run.dvz'" naming up to three ``suffix`` files in ``folder``, or ""."""
    try:
        found = sorted(p.name for p in folder.glob(f"*{suffix}"))[:3]
    except OSError:
        return ""
    return f", e.g. {', '.join(repr(n) for n in found)}" if found else f" (it holds no {suffix} file)"
