"""The ``diffviz`` command.

    diffviz explain "a red circle left of a blue square" --out run.html   # generate, trace, report
    diffviz report run.dvz --out run.html                                  # report from a saved trace
    diffviz batch prompts.txt --out runs/study        # many prompts (torchrun -m diffviz batch ... shards)
    diffviz study runs/study --out study.html         # the batch's study as an offline report

``explain`` and ``batch`` use the classroom model unless ``--model PATH`` (or the environment variable
DIFFVIZ_MODEL) names a local diffusers folder. ``explain`` writes the trace and the report to temporary
files beside their targets and renames both only when both are complete, so a failed or
interrupted run leaves the previous pair as it was.
Exit status: 0 done, 2 bad arguments, 1 anything else that went wrong (with a message, no traceback),
130 interrupted. Imports stay inside the commands, so ``diffviz --help`` starts without torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from diffviz import __version__
from diffviz.pipelines import MODEL_ENV, SCHEDULERS

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 0 .. 2**64 - 1


class CliError(Exception):
    """A problem to report in one line, without a traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        _check(args.parser, args)
        return args.run(args)
    except (CliError, OSError) as err:  # OSError: e.g. an --out folder that cannot be written
        print(f"diffviz: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("diffviz: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffviz", description="See how each word of a prompt shapes a "
                                     "diffusion model's image.")
    parser.add_argument("--version", action="version", version=f"diffviz {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    talk = argparse.ArgumentParser(add_help=False)
    loud = talk.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="print only the paths written and errors")
    loud.add_argument("-v", "--verbose", action="store_true",
                      help="also show the libraries' own messages and warnings, and the report's progress")

    ex = sub.add_parser("explain", parents=[talk],
                        help="generate an image, trace it, and write an HTML report",
                        description="Generate an image from PROMPT, trace it, save the trace (.dvz) "
                        "beside the report and write a self-contained HTML report.")
    ex.add_argument("prompt", help='the prompt, in quotes: "a red circle left of a blue square"')
    ex.add_argument("--out", default="run.html", type=Path, help="HTML report to write (default: run.html)")
    ex.add_argument("--trace", type=Path, help="trace file to write (default: the report's name with .dvz)")
    ex.add_argument("--model", type=Path, help="local diffusers pipeline folder (default: $DIFFVIZ_MODEL "
                    "if set, else the classroom model)")
    ex.add_argument("--steps", type=int, default=25, help="denoising steps (default: 25)")
    ex.add_argument("--seed", type=int, default=0, help="random seed, 0 or more (default: 0); the generator "
                    "is seeded on the CPU, as in Python with torch.Generator().manual_seed(SEED)")
    ex.add_argument("--guidance", type=float, default=7.5,
                    help="classifier-free guidance scale (default: 7.5)")
    ex.add_argument("--scheduler", choices=list(SCHEDULERS), help="sampler (default: the model's own)")
    ex.set_defaults(run=_explain, parser=ex)

    rep = sub.add_parser("report", parents=[talk], help="write an HTML report from a saved trace",
                         description="Write a self-contained HTML report from a trace file saved by "
                         "`diffviz explain` or Trace.save.")
    rep.add_argument("trace", type=Path, help="trace file (.dvz)")
    rep.add_argument("--out", type=Path, help="HTML report to write (default: the trace's name with .html)")
    rep.add_argument("--judge", action="store_true", help="add the classroom judge's verdict on the image "
                     "(a trace of a classroom-grammar prompt; explain adds it for the classroom model)")
    rep.set_defaults(run=_report, parser=rep)

    bat = sub.add_parser("batch", parents=[talk],
                         help="generate and trace many prompts into a folder (resumable, sharded)",
                         description="Generate and trace every prompt of PROMPTS into DIR: a file per item "
                         "and a Parquet index. A second run skips the items that are done. Under `torchrun "
                         "--nproc_per_node K -m diffviz batch ...` or `accelerate launch --multi_gpu "
                         "--num_processes K -m diffviz batch ...` each process takes its share.")
    bat.add_argument("prompts", type=Path, help="text file (one prompt a line), or .csv / .jsonl with a "
                     "'prompt' column and optional seed, negative_prompt, steps, guidance")
    bat.add_argument("--out", required=True, type=Path, help="output folder")
    bat.add_argument("--model", type=Path, help="local diffusers pipeline folder (default: $DIFFVIZ_MODEL if "
                     "set, else the classroom model)")
    bat.add_argument("--keep", choices=["summary", "full"], default="summary",
                     help="summary: per-word maps for a few step windows, the image and final x0 (small); "
                     "full: the whole trace (default: summary)")
    bat.add_argument("--windows", type=int, default=3, help="step windows a summary keeps (default: 3)")
    bat.add_argument("--steps", type=int, default=25,
                     help="denoising steps, where a row gives none (default: 25)")
    bat.add_argument("--seed", type=int, default=0, help="random seed, where a row gives none (default: 0); "
                     "seeded on the CPU, as explain does")
    bat.add_argument("--guidance", type=float, default=7.5,
                     help="classifier-free guidance scale, where a row gives none (default: 7.5)")
    bat.add_argument("--negative-prompt", help="negative prompt, where a row gives none")
    bat.add_argument("--scheduler", choices=list(SCHEDULERS), help="sampler (default: the model's own)")
    bat.set_defaults(run=_batch, parser=bat)

    stu = sub.add_parser("study", parents=[talk], help="write an HTML report of a batch folder's study",
                         description="Read every item of a `diffviz batch` folder (diffviz.study) and "
                         "write a self-contained HTML report of the distributions.")
    stu.add_argument("dir", type=Path, help="a folder written by `diffviz batch`")
    stu.add_argument("--out", type=Path, default=Path("study.html"), help="HTML report (default: study.html)")
    stu.set_defaults(run=_study, parser=stu)
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Argument errors argparse cannot see; exits with status 2 and a message naming the bad value."""
    if args.command in ("explain", "batch"):
        _check_run(parser, args)
    if args.command == "batch" and not 1 <= args.windows <= 100:
        parser.error(f"--windows must be between 1 and 100, not {args.windows}.")
    if args.command == "explain":
        if not args.prompt.strip():
            parser.error('the prompt is empty; give one in quotes, e.g. "a red circle left of a blue '
                         'square".')
        args.trace = args.trace or args.out.with_suffix(".dvz")
        if args.trace.resolve() == args.out.resolve():
            parser.error(f"--trace and --out are the same file ({args.out}); give the trace a .dvz name.")
    if args.command == "report":
        args.out = args.out or args.trace.with_suffix(".html")
        if args.out.resolve() == args.trace.resolve():
            parser.error(f"--out would overwrite the trace file {args.trace}; give the report a .html name.")


def _check_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The generation settings explain and batch share."""
    if not 1 <= args.steps <= 1000:
        parser.error(f"--steps must be between 1 and 1000, not {args.steps}.")
    if not 0 <= args.seed <= MAX_SEED:
        parser.error(f"--seed must be between 0 and {MAX_SEED}, not {args.seed}.")
    if not 0 <= args.guidance <= 100:
        parser.error(f"--guidance must be between 0 and 100 (1 or less turns guidance off), "
                     f"not {args.guidance:g}.")


def _explain(args: argparse.Namespace) -> int:
    _check_writable(args.trace, args.out)
    say = _say(args)
    import torch

    import diffviz
    from diffviz.pipelines import set_scheduler
    from diffviz.viz import report

    _library_messages(args.verbose)
    pipe = _load(args.model, quiet=args.quiet)
    if args.scheduler:
        set_scheduler(pipe, args.scheduler)
    classroom = args.model is None and not os.environ.get(MODEL_ENV)
    if classroom:
        unknown = diffviz.classroom.unknown(pipe, args.prompt)
        if unknown:
            print(f"diffviz: warning: the classroom model never learnt {', '.join(map(repr, unknown))}; "
                  "they still reach it, as character tokens it has no meaning for. Its words: "
                  f"{' '.join(diffviz.classroom.vocabulary())}.", file=sys.stderr)
    pipe.set_progress_bar_config(desc="denoising", unit="step", leave=True, disable=args.quiet)
    generator = torch.Generator().manual_seed(args.seed)  # on the CPU: the same noise on any device
    say(f"generating “{args.prompt}”: {args.steps} steps, seed {args.seed}, guidance {args.guidance:g}")
    try:
        with diffviz.trace(pipe) as tr:
            pipe(args.prompt, num_inference_steps=args.steps, guidance_scale=args.guidance,
                 generator=generator)
    except (ValueError, diffviz.CaptureError) as err:  # e.g. a word the model's tokenizer does not know
        raise CliError(str(err)) from None
    with _together(args.trace, args.out) as (trace_tmp, out_tmp):
        tr.save(trace_tmp)
        report(tr, out_tmp, progress=args.verbose, notes=_judged(tr) if classroom else None)
    print(f"trace:  {args.trace.resolve()}\nreport: {args.out.resolve()}")
    return 0


def _report(args: argparse.Namespace) -> int:
    _check_writable(args.out)
    import diffviz
    from diffviz.viz import report

    try:
        tr = diffviz.load_trace(args.trace)
    except (FileNotFoundError, diffviz.TraceFileError) as err:
        raise CliError(str(err)) from None
    with _together(args.out) as (out_tmp,):
        report(tr, out_tmp, progress=args.verbose, notes=_judged(tr) if args.judge else None)
    print(f"report: {args.out.resolve()}")
    return 0


def _batch(args: argparse.Namespace) -> int:
    import torch

    from diffviz import batch
    from diffviz.pipelines import set_scheduler

    say = _say(args)
    try:
        batch.require_extra()
        items = batch.read_prompts(args.prompts, seed=args.seed, steps=args.steps, guidance=args.guidance,
                                   negative_prompt=args.negative_prompt)
        rank, _, local_rank = batch.launch_env()
        _library_messages(args.verbose)
        pipe = _load(args.model, device=f"cuda:{local_rank}" if torch.cuda.is_available() else None,
                     quiet=args.quiet or rank > 0)
        pipe.set_progress_bar_config(disable=True)
        if args.scheduler:
            set_scheduler(pipe, args.scheduler)
        result = batch.run(items, args.out, pipe, keep=args.keep, windows=args.windows,
                           progress=not args.quiet)
    except (batch.BatchError, FileNotFoundError, ImportError) as err:
        raise CliError(str(err)) from None
    say(f"rank {rank}: {result.ran} items run, {result.skipped} already done, {result.errors} failed"
        + (" (their index rows say why)" if result.errors else ""))
    if result.index is not None:
        print(f"index: {result.index.resolve()}")
    return 0


def _study(args: argparse.Namespace) -> int:
    from diffviz.batch import require_extra

    try:
        require_extra()
        from diffviz import classroom
        from diffviz.studies import study
        from diffviz.viz.study import study_report

        df = study(args.dir, grader=classroom.grader, progress=not args.quiet)
    except (FileNotFoundError, ImportError) as err:
        raise CliError(str(err)) from None
    out = study_report(df, args.out)
    _say(args)(f"study: {len(df)} (item, word) rows from {df['id'].nunique() if len(df) else 0} items")
    print(f"report: {out.resolve()}")
    return 0


def _judged(trace) -> dict[str, str]:
    """The report's "judge" row: the classroom judge's verdict on the trace's image, if it has one."""
    from diffviz.classroom.judge import describe

    verdict = None if trace.image is None else describe(trace.prompt, trace.image.numpy())
    return {} if verdict is None else {"judge": verdict}


def _say(args: argparse.Namespace):
    """A print to stderr for progress messages, silent with --quiet."""
    return (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr))


def _library_messages(verbose: bool) -> None:
    """With --verbose, diffusers and transformers show their info messages, warnings and loading
    bars (by default loading silences them: see diffviz.pipelines.quiet_loading)."""
    if verbose:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.set_verbosity_info()
        tlog.set_verbosity_info()


def _check_writable(*paths: Path) -> None:
    """CliError unless each path can be written: checked before any model runs."""
    for path in paths:
        if path.is_dir():
            raise CliError(f"{str(path)!r} is a folder; give a file name for the output, "
                           f"e.g. {str(path / 'run.html')!r}.")
        folder = path.parent
        while not folder.exists() and folder != folder.parent:  # the first folder that exists
            folder = folder.parent
        if not folder.is_dir():
            raise CliError(f"cannot write {str(path)!r}: {str(folder)!r} is a file, not a folder.")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise CliError(f"cannot write {str(path)!r}: the folder {str(folder)!r} is not writable; choose "
                           "another --out (or --trace).")


@contextmanager
def _together(*targets: Path) -> Iterator[list[Path]]:
    """Yield a temporary path beside each of ``targets``; once the block has written them all, rename
    each onto its target. If the block fails or is interrupted, remove them: the targets stay as they were."""
    temps = [t.parent / f".{t.name}.{os.getpid()}.partial" for t in targets]
    for t in targets:
        t.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield temps
        for tmp, target in zip(temps, targets):
            os.replace(tmp, target)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def _load(model: Path | None, device: str | None = None, quiet: bool = False):
    """The pipeline at ``model``; without one, $DIFFVIZ_MODEL or the classroom model (as
    ``diffviz.load_pipeline()``). A CliError naming the next step when it cannot be loaded."""
    import diffviz

    source = model or os.environ.get(MODEL_ENV) or "the classroom model"
    if not quiet:
        print(f"loading {source}", file=sys.stderr)
    try:
        return diffviz.load_pipeline(model, device=device)
    except (FileNotFoundError, TypeError, ImportError) as err:
        hint = "" if model else " Or give a local diffusers pipeline folder with --model PATH."
        raise CliError(f"{str(err).rstrip('.')}.{hint}") from None


if __name__ == "__main__":
    sys.exit(main())
