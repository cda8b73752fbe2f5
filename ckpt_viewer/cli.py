"""`ckpt-viewer`: no subcommand opens the GUI; subcommands work without a window."""

from __future__ import annotations

import argparse
import os
import sys

from ckpt_viewer import __version__
from ckpt_viewer.core import CheckpointError, describe_error
from ckpt_viewer.core.listing.text import safe_text, strict_json

SUBCOMMANDS = (
    "inspect",
    "stats",
    "export",
    "verify",
    "diff",
    "globals",
    "check",
    "layers",
    "sanitize",
    "timeline",
)

NO_DISPLAY = (
    "error: no display: set DISPLAY (or QT_QPA_PLATFORM=offscreen); the "
    "inspect/stats/export/verify/diff commands work without one"
)


class Parser(argparse.ArgumentParser):
    """Usage mistakes get one line too (`error: ...` on stderr, exit 2), not usage + error."""

    def error(self, message):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def whole_number(minimum: int):
    """An argparse type: an int of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def say(line: str, file=None):
    """Print one line: whatever part of it came from a file cannot move the cursor, clear the
    screen or start a line of its own."""
    print(safe_text(line), file=file or sys.stdout)


def say_lines(lines, file=None):
    """say() each line, written without a print() call per line (a 50,000-key listing)."""
    (file or sys.stdout).writelines(f"{safe_text(line)}\n" for line in lines)


def say_json(value):
    sys.stdout.write(strict_json(value) + "\n")


def say_report(args, report, text_lines):
    """A report as one JSON object (--json) or as its text lines."""
    if args.json:
        say_json(report.to_json())
    else:
        say_lines(text_lines(report))


def _inspect_parser(sub):
    p = sub.add_parser("inspect", help="list what a checkpoint holds (reads metadata only)")
    p.add_argument(
        "path",
        help="a file, a Hugging Face model directory or *.index.json, "
        "or a torch.distributed.checkpoint directory",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--depth",
        type=whole_number(1),
        default=None,
        help="show the tree to this depth only (1 or more); with --by-module the module depth "
        "(default 2)",
    )
    p.add_argument(
        "--by-module",
        action="store_true",
        help="bytes and elements per module (parameters, buffers, optimizer state, other) and "
        "the memory the model needs for inference and training",
    )
    p.add_argument(
        "--file-order",
        action="store_true",
        help="list keys in the file's order (default: keys stored sorted as text are listed "
        "in natural order, h.2 before h.10)",
    )
    p.set_defaults(run=run_inspect)


def _stats_parser(sub):
    p = sub.add_parser("stats", help="statistics and histogram of one tensor")
    p.add_argument("path")
    p.add_argument("key", help="the tensor's dotted key, as `inspect` prints it")
    p.add_argument("--bins", type=whole_number(1), default=256, help="histogram bins (default 256)")
    p.add_argument(
        "--part",
        choices=("magnitude", "real", "imag"),
        default="magnitude",
        help="complex tensors: which part to describe",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run_stats)


def _export_parser(sub):
    p = sub.add_parser("export", help="write a flat state_dict cut out of a checkpoint")
    p.add_argument("src")
    p.add_argument("-o", "--output", dest="dst", required=True, help="the file to write")
    p.add_argument("--root", default="", help="export this subtree; keys become relative to it")
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="keep keys matching GLOB (as the source names them, relative to "
        "--root, before prefixes change); repeatable",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="drop keys matching GLOB; repeatable",
    )
    p.add_argument("--strip-prefix", default="", metavar="P", help="remove P from key starts")
    p.add_argument("--add-prefix", default="", metavar="P", help="prepend P to every key")
    p.add_argument(
        "--dtype",
        default="keep",
        choices=("keep", "float32", "float16", "bfloat16"),
        help="cast floating tensors (others are kept)",
    )
    p.add_argument("--device", default="cpu", help="location tag to write: cpu, cuda or cuda:N")
    p.add_argument(
        "--format",
        choices=("pth", "safetensors"),
        default=None,
        help="default: from the output's extension",
    )
    p.add_argument(
        "--max-shard-size",
        default=None,
        metavar="SIZE",
        help="write Hugging Face style shards of at most SIZE (2GB, 500MB...) and "
        "their index into the folder given by -o",
    )
    p.add_argument(
        "--to-torch",
        action="store_true",
        help="port Keras or Flax weights to a PyTorch state_dict (names, transposes, gate "
        "orders); the rule per tensor and any variable no rule takes are listed",
    )
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--no-verify", action="store_true", help="skip reopening the written file")
    p.set_defaults(run=run_export)


def _verify_parser(sub):
    p = sub.add_parser("verify", help="read every byte and check integrity (exit 1 if damaged)")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run_verify)


def _diff_parser(sub):
    p = sub.add_parser("diff", help="compare two checkpoints (exit 0 identical, 1 different)")
    p.add_argument("a")
    p.add_argument("b")
    for side in ("a", "b"):
        p.add_argument(
            f"--root-{side}",
            default="",
            metavar="KEY",
            help=f"compare the subtree KEY of {side.upper()} (keys relative to it)",
        )
        p.add_argument(
            f"--strip-prefix-{side}",
            default="",
            metavar="P",
            help=f"remove P from the start of {side.upper()}'s keys (e.g. module.)",
        )
        p.add_argument(
            f"--add-prefix-{side}",
            default="",
            metavar="P",
            help=f"prepend P to {side.upper()}'s keys",
        )
    p.add_argument(
        "--map-gguf",
        choices=("auto", "off"),
        default="auto",
        help="when one side is a GGUF file, rename the other side's tensors to "
        "llama.cpp's GGUF names (auto, the default) or compare names as they are",
    )
    p.add_argument(
        "--auto-align",
        action="store_true",
        help="choose the roots and wrapper prefixes (module., _orig_mod., model.) that make "
        "the most keys common, instead of --root/--strip-prefix/--add-prefix",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run_diff)


def _path_parser(sub, name: str, help_text: str, run):
    """A command that reads one PATH and can print one JSON object."""
    p = sub.add_parser(name, help=help_text)
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)
    return p


def _globals_parser(sub):
    _path_parser(
        sub,
        "globals",
        "every Python global the file's pickles name, triaged "
        "(torch / data / class / code), and an allowlist snippet",
        run_globals,
    )


def _sanitize_parser(sub):
    p = sub.add_parser(
        "sanitize",
        help="write a copy that torch.load(weights_only=True) loads "
        "with no allowlist (objects converted, code dropped)",
    )
    p.add_argument("src")
    p.add_argument("-o", "--output", dest="dst", required=True, help="the file to write")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.set_defaults(run=run_sanitize)


def _check_parser(sub):
    _path_parser(
        sub,
        "check",
        "scan every tensor for NaN/Inf, zeros, duplicates, optimizer "
        "mismatches (exit 0 healthy, 1 errors found)",
        run_check,
    )


def _layers_parser(sub):
    p = _path_parser(
        sub,
        "layers",
        "per-layer metrics across depth of repeated blocks (blocks.N..., layers.N..., h.N...)",
        run_layers,
    )
    p.add_argument(
        "--spectral",
        action="store_true",
        help="also singular values of each weight (torch; GPU when present): "
        "stable rank and power-law alpha",
    )


def _timeline_parser(sub):
    p = sub.add_parser(
        "timeline",
        help="many checkpoints of one run, ordered by the step inside them: per key and step "
        "norms, updates, NaN/Inf, learning rates, losses and findings",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="checkpoint files or folders, a folder of them, or a quoted glob",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--metrics",
        help="comma-separated, from: l2, std, max_abs, update, cos_prev, cos_first, nan, inf, "
        "exp_avg_sq, alpha (default: all but alpha, which takes an SVD per tensor and step)",
    )
    p.add_argument(
        "--show",
        default="update",
        metavar="METRIC",
        help="the metric of the text table (default: update)",
    )
    p.add_argument("--keys", action="append", default=[], metavar="GLOB", help="only these keys")
    p.add_argument(
        "--cluster",
        metavar="tcp://HOST:PORT",
        help="run the per-tensor scan on this dask.distributed scheduler ([cluster] extra)",
    )
    p.set_defaults(run=run_timeline)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ckpt-viewer",
        usage="ckpt-viewer [PATH ...] [--screenshot OUT.png [--size WxH]]\n"
        "       ckpt-viewer COMMAND ...   (ckpt-viewer COMMAND --help for its options)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Look inside PyTorch checkpoints without running code from them.\n\n"
        "no COMMAND:\n"
        "  [PATH ...]  open the viewer window, each PATH in a tab "
        "(--screenshot OUT.png: save it, exit)",
    )
    parser.add_argument("--version", action="version", version=f"ckpt-viewer {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", title="commands", prog="ckpt-viewer"
    )
    _inspect_parser(sub)
    _stats_parser(sub)
    _export_parser(sub)
    _verify_parser(sub)
    _diff_parser(sub)
    _globals_parser(sub)
    _check_parser(sub)
    _layers_parser(sub)
    _sanitize_parser(sub)
    _timeline_parser(sub)
    return parser


def window_size(text: str) -> tuple[int, int]:
    """An argparse type: WxH, each side 200 to 10000 pixels."""
    width, _, height = text.lower().partition("x")
    if not (
        width.isdigit()
        and height.isdigit()
        and 200 <= int(width) <= 10000
        and 200 <= int(height) <= 10000
    ):
        raise argparse.ArgumentTypeError(
            f"expected WxH such as 1366x768 (200 to 10000 each), got {text!r}"
        )
    return int(width), int(height)


def build_gui_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ckpt-viewer",
        description="Open the viewer window. Subcommands: "
        + ", ".join(SUBCOMMANDS)
        + " (ckpt-viewer COMMAND --help).",
    )
    parser.add_argument("--version", action="version", version=f"ckpt-viewer {__version__}")
    parser.add_argument("paths", nargs="*", metavar="PATH", help="checkpoints to open")
    parser.add_argument(
        "--screenshot",
        metavar="OUT.png",
        help="open PATH, select its largest tensor, save the window, exit "
        "(settings and Open Recent are left as they were)",
    )
    parser.add_argument(
        "--size",
        type=window_size,
        default=(1366, 768),
        metavar="WxH",
        help="--screenshot's window size (default 1366x768)",
    )
    return parser


def run_inspect(args) -> int:
    from ckpt_viewer.core import paused_gc

    # the listing is a million small objects that live until exit: collecting cycles among
    # them would walk them all, again and again (see paused_gc)
    from ckpt_viewer.core.listing.footprint import (
        bytes_map,
        memory_lines,
        memory_needs,
        module_lines,
        module_rows,
    )
    from ckpt_viewer.core.listing.open import open_checkpoint
    from ckpt_viewer.core.listing.summary import inspect_dict

    with paused_gc():
        checkpoint = open_checkpoint(args.path)
        depth = args.depth or 2
        if args.json:
            data = inspect_dict(checkpoint)
            data["memory"] = memory_needs(checkpoint)
            if args.by_module:
                rows = module_rows(bytes_map(checkpoint), depth)
                data["modules"] = [{"depth": d, **b.to_json()} for d, b in rows]
            say_json(data)
        elif args.by_module:
            say_lines(module_lines(bytes_map(checkpoint), depth))
            say_lines(memory_lines(memory_needs(checkpoint)))
        else:
            from ckpt_viewer.core.listing.report import text_report  # not for --json

            say_lines(text_report(checkpoint, max_depth=args.depth, file_order=args.file_order))
    return 0


def run_globals(args) -> int:
    from ckpt_viewer.core.listing.globals import report_dict, text_lines
    from ckpt_viewer.core.listing.open import open_checkpoint

    checkpoint = open_checkpoint(args.path)
    if args.json:
        say_json(report_dict(checkpoint))
    else:
        for line in text_lines(checkpoint):
            say(line)
    return 0


def run_stats(args) -> int:
    from ckpt_viewer.core.analysis.verify import check_tensor_records
    from ckpt_viewer.core.listing.open import open_checkpoint
    from ckpt_viewer.core.listing.text import nearest_keys
    from ckpt_viewer.core.progress import run
    from ckpt_viewer.core.values.stats import compute

    checkpoint = open_checkpoint(args.path)
    node = checkpoint.find(args.key)
    if node is None or node.tensor is None:
        guesses = nearest_keys((key for key, _, _ in checkpoint.tensors()), args.key)
        hint = f"; did you mean {' or '.join(map(repr, guesses))}?" if guesses else ""
        raise CheckpointError(f"no tensor with key {args.key!r}{hint} (see `ckpt-viewer inspect`)")
    problem = run(check_tensor_records(node.tensor))
    if problem:
        say(f"warning: {args.path}: {problem}", file=sys.stderr)
    stats = run(compute(node.tensor, bins=args.bins, part=args.part))
    if args.json:
        say_json(stats.to_json())
    else:
        from ckpt_viewer.core.listing.report import stats_lines  # not for --json

        for line in stats_lines(args.key, node.tensor, stats):
            say(line)
    return 0


def run_export(args) -> int:
    from ckpt_viewer.core.listing.model import format_bytes
    from ckpt_viewer.core.listing.open import open_checkpoint
    from ckpt_viewer.core.listing.text import plural
    from ckpt_viewer.core.progress import run
    from ckpt_viewer.core.writing.export import ExportPlan, export, parse_size

    fmt = args.format or ("safetensors" if args.dst.endswith(".safetensors") else "pth")
    plan = ExportPlan(
        root=args.root,
        include=args.include,
        exclude=args.exclude,
        strip_prefix=args.strip_prefix,
        add_prefix=args.add_prefix,
        dtype=args.dtype,
        device=args.device,
        format=fmt,
        max_shard_size=parse_size(args.max_shard_size) if args.max_shard_size else 0,
    )
    checkpoint = open_checkpoint(args.src)
    if args.to_torch:
        from ckpt_viewer.core.analysis.porting import port

        mapping = port(checkpoint)
        if not mapping.ported:
            raise CheckpointError(
                f"no variable of the {mapping.framework} file matches a porting rule "
                f"({len(mapping.unmatched)} unmatched)"
            )
        say_lines(mapping.lines())
        checkpoint = mapping.checkpoint(checkpoint)
    summary = run(export(checkpoint, plan, args.dst, force=args.force, verify=not args.no_verify))
    note = ", verified" if summary.verified else ""
    if summary.files > 1:
        note = f", {summary.files} shards + index" + note
    say(
        f"wrote {summary.path}: {plural(summary.tensors, 'tensor')}, {format_bytes(summary.bytes)}, "
        f"{summary.format}, location {summary.device}{note}"
    )
    return 0


def run_sanitize(args) -> int:
    from ckpt_viewer.core.listing.model import format_bytes
    from ckpt_viewer.core.listing.open import open_checkpoint
    from ckpt_viewer.core.listing.text import plural
    from ckpt_viewer.core.progress import run
    from ckpt_viewer.core.writing.sanitize import sanitize

    checkpoint = open_checkpoint(args.src)
    summary = run(sanitize(checkpoint, args.dst, force=args.force))
    for line in summary.changes:
        say(line)
    say(
        f"wrote {summary.path}: {plural(summary.tensors, 'tensor')}, "
        f"{format_bytes(summary.bytes)}, {plural(len(summary.changes), 'change')}; "
        "torch.load(weights_only=True) loads it"
    )
    return 0


def run_verify(args) -> int:
    from ckpt_viewer.core.analysis.verify import verify
    from ckpt_viewer.core.listing.model import format_bytes
    from ckpt_viewer.core.listing.text import plural
    from ckpt_viewer.core.progress import run

    report = run(verify(args.path))
    args.status = 0 if report.ok else 1
    if args.json:
        say_json(report.to_json())
        return args.status
    if not report.ok:
        say(f"damaged: {args.path}: {report.problem}")
        return 1
    notes = "; " + "; ".join(report.notes) if report.notes else ""
    loader = f"; {report.loader_note}" if report.loader_note else ""
    say(
        f"intact: {args.path}: {plural(report.records, 'record')}, {format_bytes(report.bytes)} "
        f"checked{notes}{loader}"
    )
    return 0


def run_diff(args) -> int:
    from ckpt_viewer.core.analysis.diff import Side, diff
    from ckpt_viewer.core.listing.open import open_checkpoint
    from ckpt_viewer.core.listing.report import diff_lines
    from ckpt_viewer.core.progress import run

    checkpoints = []
    for path in (args.a, args.b):
        try:
            checkpoints.append(open_checkpoint(path))
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    sides = [
        Side(
            getattr(args, f"root_{s}"),
            getattr(args, f"strip_prefix_{s}"),
            getattr(args, f"add_prefix_{s}"),
        )
        for s in ("a", "b")
    ]
    if args.auto_align and sides != [Side(), Side()]:
        raise CheckpointError(
            "--auto-align chooses roots and prefixes itself: give no --root, --strip-prefix or "
            "--add-prefix with it"
        )
    report = run(
        diff(
            checkpoints[0],
            checkpoints[1],
            *sides,
            map_gguf=args.map_gguf == "auto",
            auto_align=args.auto_align,
        )
    )
    args.status = 0 if report.identical else 1
    say_report(args, report, diff_lines)
    return args.status


def run_check(args) -> int:
    from ckpt_viewer.core.analysis.check import check, text_lines
    from ckpt_viewer.core.listing.open import open_checkpoint
    from ckpt_viewer.core.progress import run

    report = run(check(open_checkpoint(args.path)))
    args.status = 0 if report.ok else 1
    say_report(args, report, text_lines)
    return args.status


def run_layers(args) -> int:
    from ckpt_viewer.core.analysis.layers import layer_metrics, text_lines
    from ckpt_viewer.core.listing.open import open_checkpoint
    from ckpt_viewer.core.progress import run

    report = run(layer_metrics(open_checkpoint(args.path), spectral=args.spectral))
    say_report(args, report, text_lines)
    return 0


def run_timeline(args) -> int:
    from ckpt_viewer.core.analysis.timeline import DEFAULT_METRICS, text_lines, timeline
    from ckpt_viewer.core.progress import run

    chosen = args.metrics.split(",") if args.metrics else DEFAULT_METRICS
    metrics = [m.strip() for m in chosen if m.strip()]
    if args.show not in metrics:
        metrics.append(args.show)
    report = run(timeline(args.paths, metrics, args.keys, cluster=args.cluster))
    if args.json:
        say_json(report.to_json())
    else:
        say_lines(text_lines(report, args.show))
    return 1 if any(f.severity == "error" for f in report.findings) else 0


def has_display() -> bool:
    """Can Qt show a window here? (Checked first: without one Qt aborts with a core dump.)"""
    if sys.platform in ("darwin", "win32", "cygwin"):
        return True
    return any(os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"))


def unknown_command(word: str) -> str:
    """The error for a first word that is neither a command nor a path ('' if it may be one)."""
    if word.startswith("-") or os.path.exists(word) or os.sep in word or "." in word:
        return ""
    import difflib  # only for a mistyped command

    guess = difflib.get_close_matches(word, SUBCOMMANDS, n=1)
    if guess:
        return f"error: unknown command {word!r} (did you mean {guess[0]!r}?)"
    return (
        f"error: unknown command {word!r} and no such file or directory "
        f"(commands: {', '.join(SUBCOMMANDS)})"
    )


def run_gui(args) -> int:
    from ckpt_viewer.core.listing.open import resolve_prefix
    from ckpt_viewer.core.listing.remote import is_remote

    for path in args.paths:  # a TensorFlow prefix (ckpt-3: ckpt-3.index beside) is a file too
        if not is_remote(path) and not os.path.exists(resolve_prefix(path)):
            say(f"error: {path}: no such file or directory", file=sys.stderr)
            return 2
    if args.size != (1366, 768) and not args.screenshot:
        say(
            "error: --size is for --screenshot (the window sizes itself to the screen)",
            file=sys.stderr,
        )
        return 2
    if args.screenshot:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # the window is never shown
    if not has_display():
        print(NO_DISPLAY, file=sys.stderr)
        return 2
    from ckpt_viewer.qt.platform_check import display_problem

    problem = display_problem()
    if problem:
        say(problem, file=sys.stderr)
        return 2
    from ckpt_viewer.qt.app import main as gui_main

    return gui_main(args.paths, screenshot=args.screenshot, size=args.size)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    if argv and argv[0] in SUBCOMMANDS or argv[:1] in (["-h"], ["--help"]):
        args = build_parser().parse_args(argv)
        runner = args.run
        where = getattr(args, "path", "") or getattr(args, "src", "")
        where = "" if args.run.__name__ in ("run_diff", "run_timeline") else where
    elif argv and unknown_command(argv[0]):
        say(unknown_command(argv[0]), file=sys.stderr)
        return 2
    else:
        args = build_gui_parser().parse_args(argv)
        runner, where = run_gui, ""
    try:
        code = runner(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit (where it would be 120)
        return code
    except CheckpointError as exc:
        message = describe_error(exc)
        say(f"error: {where}: {message}" if where else f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        say("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader stopped early (`| head`): the verdict (args.status, set before printing)
        # still counts; stdout goes to /dev/null so the exit's flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return getattr(args, "status", 0)
    except Exception as exc:  # noqa: BLE001 - the contract is one line, never a traceback
        message = describe_error(exc)
        say(f"error: {where}: {message}" if where else f"error: {message}", file=sys.stderr)
        return 2
