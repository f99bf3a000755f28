"""The ``diffviz`` command.

    diffviz explain "a red circle left of a blue square" --out run.html   # generate, trace, report
    diffviz report run.dvz --out run.html                                  # report from a saved trace

``explain`` uses the classroom model unless ``--model PATH`` (or the environment variable
DIFFVIZ_MODEL) names a local diffusers folder.
Exit status: 0 done, 2 bad arguments, 1 anything else that went wrong (with a message, no traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from diffviz.pipelines import SCHEDULERS, set_scheduler


class CliError(Exception):
    """A problem to report in one line, without a traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        _check(parser, args)
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
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ex = sub.add_parser("explain", help="generate an image, trace it, and write an HTML report",
                        description="Generate an image from PROMPT, trace it, save the trace (.dvz) "
                        "beside the report and write a self-contained HTML report.")
    ex.add_argument("prompt", help='the prompt, in quotes: "a red circle left of a blue square"')
    ex.add_argument("--out", default="run.html", type=Path, help="HTML report to write (default: run.html)")
    ex.add_argument("--trace", type=Path, help="trace file to write (default: the report's name with .dvz)")
    ex.add_argument("--model", type=Path, help="local diffusers pipeline folder (default: $DIFFVIZ_MODEL "
                    "if set, else the classroom model)")
    ex.add_argument("--steps", type=int, default=25, help="denoising steps (default: 25)")
    ex.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    ex.add_argument("--guidance", type=float, default=7.5,
                    help="classifier-free guidance scale (default: 7.5)")
    ex.add_argument("--scheduler", choices=list(SCHEDULERS), help="sampler (default: the model's own)")
    ex.set_defaults(run=_explain)

    rep = sub.add_parser("report", help="write an HTML report from a saved trace",
                         description="Write a self-contained HTML report from a trace file saved by "
                         "`diffviz explain` or Trace.save.")
    rep.add_argument("trace", type=Path, help="trace file (.dvz)")
    rep.add_argument("--out", type=Path, help="HTML report to write (default: the trace's name with .html)")
    rep.set_defaults(run=_report)
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Argument errors argparse cannot see; exits with status 2 and a message naming the bad value."""
    if args.command == "explain":
        if not args.prompt.strip():
            parser.error('the prompt is empty; give one in quotes, e.g. "a red circle left of a blue '
                         'square".')
        if not 1 <= args.steps <= 1000:
            parser.error(f"--steps must be between 1 and 1000, not {args.steps}.")
        if args.seed < 0:
            parser.error(f"--seed must be 0 or more, not {args.seed}.")
        if not 0 <= args.guidance <= 100:
            parser.error(f"--guidance must be between 0 and 100 (1 or less turns guidance off), "
                         f"not {args.guidance:g}.")
        args.trace = args.trace or args.out.with_suffix(".dvz")
        if args.trace.resolve() == args.out.resolve():
            parser.error(f"--trace and --out are the same file ({args.out}); give the trace a .dvz name.")
    if args.command == "report":
        args.out = args.out or args.trace.with_suffix(".html")
        if args.out.resolve() == args.trace.resolve():
            parser.error(f"--out would overwrite the trace file {args.trace}; give the report a .html name.")


def _explain(args: argparse.Namespace) -> int:
    import torch

    import diffviz
    from diffviz.viz import report

    pipe = _load(args.model)
    if args.scheduler:
        set_scheduler(pipe, args.scheduler)
    pipe.set_progress_bar_config(desc="denoising", unit="step", leave=True)
    device = getattr(pipe, "device", torch.device("cpu"))
    generator = torch.Generator(device=device).manual_seed(args.seed)
    print(f"generating “{args.prompt}”: {args.steps} steps, seed {args.seed}, guidance {args.guidance:g}",
          file=sys.stderr)
    try:
        with diffviz.trace(pipe) as tr:
            pipe(args.prompt, num_inference_steps=args.steps, guidance_scale=args.guidance,
                 generator=generator)
    except (ValueError, diffviz.CaptureError) as err:  # e.g. a word the model's tokenizer does not know
        raise CliError(str(err)) from None
    trace_path = tr.save(args.trace)
    out = report(tr, args.out, progress=True)
    print(f"trace:  {trace_path.resolve()}\nreport: {out.resolve()}")
    return 0


def _report(args: argparse.Namespace) -> int:
    import diffviz
    from diffviz.viz import report

    try:
        tr = diffviz.load_trace(args.trace)
    except (FileNotFoundError, diffviz.TraceFileError) as err:
        raise CliError(str(err)) from None
    out = report(tr, args.out, progress=True)
    print(f"report: {out.resolve()}")
    return 0


def _load(model: Path | None):
    """The pipeline at ``model``; without one, $DIFFVIZ_MODEL or the classroom model (as
    ``diffviz.load_pipeline()``). A CliError naming the next step when it cannot be loaded."""
    import diffviz
    from diffviz.pipelines import MODEL_ENV

    source = model or os.environ.get(MODEL_ENV) or "the classroom model"
    print(f"loading {source}", file=sys.stderr)
    try:
        return diffviz.load_pipeline(model)
    except (FileNotFoundError, TypeError, ImportError) as err:
        hint = "" if model else " Or give a local diffusers pipeline folder with --model PATH."
        raise CliError(f"{str(err).rstrip('.')}.{hint}") from None


if __name__ == "__main__":
    sys.exit(main())
