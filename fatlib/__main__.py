"""Command line: ``python -m fatlib train|eval|records|bench|book ...``.

    python -m fatlib train --dataset mnist --model mnist_net --method fgsm --delta-init random \\
        --epsilon 0.3 --alpha 0.375 --optimizer adam --lr-max 5e-3 --epochs 10 --batch-size 100
    python -m fatlib eval --run runs/<hash> --epsilon 0.1 0.3 --attacks clean pgd
    torchrun --nproc_per_node=2 -m fatlib train ...      (DDP: gloo on CPU, nccl on CUDA)
    torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \\
        --rdzv_id=JOB -m fatlib train ...            (on every node; scripts/two_nodes.sh)
    python -m fatlib records status                      (the record queue; `records run`)

Every TrainConfig field is a flag (``--lr-max`` for lr_max); eps, alpha and step sizes are
in pixel units and accept fractions (``--epsilon 8/255``). Names from the papers' scripts
are accepted too: --epsilon, --attack, --delta-init, --attack-iters, --minibatch-replays,
--grad-align-cos-lambda, --lr-type.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from fractions import Fraction

# flag aliases used by the papers' scripts -> TrainConfig field
ALIASES = {"eps": ["--epsilon"], "method": ["--attack"], "fgsm_init": ["--delta-init"],
           "pgd_steps": ["--attack-iters"], "free_m": ["--minibatch-replays"],
           "ga_lambda": ["--grad-align-cos-lambda"], "lr_schedule": ["--lr-type"],
           "pgd_alpha": ["--pgd-alpha-train"]}


def number(text: str) -> float:
    """A float that may be written as a fraction: '8/255' -> 0.0313..."""
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r} (e.g. 0.3 or 8/255)")


def _optional_int(text: str):
    return None if text.lower() in ("none", "all") else int(text)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    from fatlib.train import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flags = [f"--{f.name.replace('_', '-')}"] + ALIASES.get(f.name, [])
        kind = hints[f.name]
        kw = {"dest": f.name, "default": argparse.SUPPRESS}
        if f.name == "model_kw":
            kw.update(type=json.loads, help='model options as JSON, e.g. \'{"n_filters": 4}\'')
        elif kind is bool:
            kw.update(action=argparse.BooleanOptionalAction)
        elif kind is tuple:
            kw.update(type=number, nargs="*")
        elif f.name == "n_train":
            kw.update(type=_optional_int, help="first n training examples ('all' for the split)")
        elif kind is int:
            kw.update(type=int)
        elif kind is str or kind == (str | None):
            kw.update(type=str)
        else:  # float or float | None
            kw.update(type=number)
        parser.add_argument(*flags, **kw)
    parser.add_argument("--n-filters", type=int, default=argparse.SUPPRESS,
                        help="cnn1: number of 3x3 filters (sets model_kw.n_filters)")


def _read_config_file(path: str) -> dict:
    """The fields of a TrainConfig JSON file, or a ValueError that says what the file is not."""
    try:
        with open(path) as f:
            values = json.load(f)
    except OSError as e:
        raise ValueError(f"--config {path}: cannot read it ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--config {path} is not a TrainConfig JSON file (not JSON: {e}); give a "
                         f"run's config.json or one of data/configs/*.json") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path} is not a TrainConfig JSON file: it holds a "
                         f"{type(values).__name__}, not an object of TrainConfig fields")
    return values


def _config_from_args(args: argparse.Namespace):
    from fatlib.train import TrainConfig

    values = _read_config_file(args.config) if args.config else {}
    for f in dataclasses.fields(TrainConfig):
        if hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    if hasattr(args, "n_filters"):
        values["model_kw"] = {**values.get("model_kw", {}), "n_filters": args.n_filters}
    return TrainConfig.from_dict(values)


def cmd_train(argv) -> int:
    """Train (or load) the run of a config; print its final metrics; optionally keep a record."""
    parser = argparse.ArgumentParser(prog="python -m fatlib train", description=cmd_train.__doc__)
    parser.add_argument("--config", help="a config.json to start from (flags override it)")
    parser.add_argument("--record", metavar="NAME", help="save the finished run as data/records/NAME")
    parser.add_argument("--notes", default="", help="notes stored in the record's provenance")
    parser.add_argument("--until-epoch", type=int, help="stop after this many epochs (resume later)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--print-config", action="store_true", help="print the config JSON and exit")
    _add_config_flags(parser)
    args = parser.parse_args(argv)
    try:
        config = _config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=1))
        return 0
    import torch

    from fatlib import devices, runs

    run = runs.load_or_train(config, progress=not args.no_progress, until_epoch=args.until_epoch)
    main = runs.is_main()
    if main:
        print(f"run {run.path} ({'trained ' + str(run.steps_run) + ' steps' if run.steps_run else 'loaded'})")
        if run.metrics:
            print(json.dumps({k: v for k, v in run.metrics.items() if k != "events"}, indent=1))
        if args.record and run.metrics:
            rec = runs.save_record(run, args.record, notes=args.notes)
            print(f"record saved: {rec.path}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        devices.exit_distributed(0)
    return 0


def _load_for_eval(args):
    """(model, dataset name, default eps) from --run, --record, --checkpoint or --weights."""
    from fatlib import models, runs
    from fatlib.train import load_model

    if args.run:
        run = runs.load_run(args.run)
        return run.model, run.config.dataset, run.config.eps, run.config.norm
    if args.record:
        rec = runs.load_record(args.record)
        return rec.model(), rec.config.dataset, rec.config.eps, rec.config.norm
    if args.checkpoint:
        cfg, model = load_model(args.checkpoint)
        return model, cfg.dataset, cfg.eps, cfg.norm
    if args.weights and args.model and args.dataset:
        import torch

        model = models.build(args.model, args.dataset)
        models.load_weights(model, torch.load(args.weights, map_location="cpu", weights_only=True),
                            what=args.weights)
        return model.eval(), args.dataset, None, "linf"
    raise ValueError("give --run DIR, --record NAME, --checkpoint FILE, or --weights FILE with "
                     "--model and --dataset")


def cmd_eval(argv) -> int:
    """Evaluate a trained model under attacks at several eps; print a table of accuracies."""
    parser = argparse.ArgumentParser(prog="python -m fatlib eval", description=cmd_eval.__doc__)
    src = parser.add_argument_group("model (one of)")
    src.add_argument("--run", help="a run folder (runs/<hash>)")
    src.add_argument("--record", help="a record name (data/records/<name>, needs weights.pt)")
    src.add_argument("--checkpoint", help="a fatlib checkpoint.pt")
    src.add_argument("--weights", help="a plain state_dict (e.g. the authors' MNIST model)")
    src.add_argument("--model", help="model name, with --weights")
    src.add_argument("--dataset", help="dataset name, with --weights")
    parser.add_argument("--epsilon", "--eps", type=number, nargs="+", help="radii (default: training eps)")
    parser.add_argument("--norm", choices=("linf", "l2"), help="default: the training norm")
    parser.add_argument("--attacks", nargs="+", default=["clean", "fgsm", "pgd"])
    parser.add_argument("--pgd-steps", "--attack-iters", type=int, default=50)
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--pgd-alpha", type=number, help="PGD step (pixel units); default eps/4")
    parser.add_argument("--n", type=int, default=1000, help="first n test images")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    import torch

    from fatlib import data, evaluate
    from fatlib.threat import ThreatModel

    if args.pgd_alpha is not None and not 0 < args.pgd_alpha <= 1:
        parser.error(f"--pgd-alpha {args.pgd_alpha} is outside (0, 1]: step sizes are in pixel "
                     f"units (2/255, not 2)")
    try:
        model, dataset, train_eps, train_norm = _load_for_eval(args)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    eps_list = args.epsilon or ([train_eps] if train_eps else None)
    if not eps_list:
        parser.error("give --epsilon")
    images, labels, source = data.load_with_source(dataset, "test", n=args.n)
    rows = []
    for eps in eps_list:
        torch.manual_seed(0)
        correct = evaluate.evaluate(model, images, labels, ThreatModel(args.norm or train_norm, eps),
                                    attacks=tuple(args.attacks), pgd_steps=args.pgd_steps,
                                    pgd_restarts=args.restarts, pgd_alpha=args.pgd_alpha,
                                    batch_size=args.batch_size)
        rows.append({"eps": eps, **{k: evaluate.accuracy(v) for k, v in correct.items()}})
    if args.json:
        print(json.dumps({"source": source, "rows": rows}, indent=1))
        return 0
    print(f"{source}; PGD-{args.pgd_steps}-{args.restarts}, accuracy in %")
    print("eps".ljust(10) + "".join(a.rjust(12) for a in args.attacks))
    for row in rows:
        print(f"{row['eps']:<10.4g}" + "".join(f"{row[a]:12.2f}" for a in args.attacks))
    return 0


RECORDS_EPILOG = """\
records run makes records only from committed code: it refuses (exit code 2) while fatlib/
has uncommitted changes. To go on developing while the queue runs, run it from a separate
checkout of a commit:

    git worktree add ../fatlib-queue HEAD
    cd ../fatlib-queue && python -m fatlib records run --budget 600

Its runs/ and data/records/ are that checkout's own (commit the new records there, or copy
data/records/<name>/ back). A stopped or killed run resumes from its last epoch on the next
`records run` (a killed evaluation starts over); progress is logged to runs/record_queue.log
($FATLIB_RUNS_DIR).

A run longer than the machine is lent for: `records park` copies the unfinished queue runs
to data/queue_progress/ (commit them); on the next machine `records unpark` restores them and
prints the checkout of their commit to resume them from."""


def cmd_records(argv) -> int:
    """The record queue (data/record_queue.json): the book's longer runs, made in the background.

    status: one line per entry (done with its commit, in progress at epoch k of n, not started,
    waiting for native bf16, or, for an evaluation, waiting for its record) with an estimate of
    the hours it still needs on this machine, and the total. run: trains the entries not done,
    in order, one epoch at a time, resuming each from its last epoch checkpoint, stops before
    the budget runs out, and saves each finished run as data/records/<name>; an evaluation
    entry (AutoAttack on a made record) runs in one go, a killed one starts over, and writes
    data/records/<record>/<attack>_<version>_<n>.json. park / unpark: carry unfinished runs
    to the next machine through data/queue_progress/ (fatlib.queue_progress).
    """
    import inspect

    parser = argparse.ArgumentParser(prog="python -m fatlib records",
                                     description=inspect.cleandoc(cmd_records.__doc__),
                                     epilog=RECORDS_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True, metavar="status|run|park|unpark")
    status = sub.add_parser("status", help="where each entry stands, and the hours left")
    status.add_argument("--measure", action="store_true",
                        help="time a few steps here for entries nothing else estimates (slow)")
    run = sub.add_parser("run", help="make the missing records", epilog=RECORDS_EPILOG,
                         description="Train the queue's missing records, in order, one epoch at "
                                     "a time (resuming), within --budget; save each as a record; "
                                     "run the evaluations of made records.",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--budget", type=float, metavar="MINUTES",
                     help="stop cleanly before this many minutes have passed (default: no limit)")
    run.add_argument("--only", nargs="+", metavar="NAME",
                     help="work only on these entries (records or evaluations)")
    park = sub.add_parser("park", help="copy the unfinished queue runs to data/queue_progress/")
    unpark = sub.add_parser("unpark", help="restore the runs of data/queue_progress/ into the run store")
    for p in (status, run, park, unpark):
        p.add_argument("--queue", metavar="FILE", help="the queue file (default data/record_queue.json)")
    args = parser.parse_args(argv)
    from fatlib import queue_progress, runs

    try:
        if args.action == "status":
            print(runs.format_status(runs.queue_status(args.queue, measure=args.measure)))
            for p in queue_progress.parked_runs():
                print(f"parked in data/queue_progress: {p['record']} at epoch {p['passes_done']} of "
                      f"{p['passes']} (commit {p['commit'][:10]}); `records unpark` restores it")
            return 0
        if args.action == "park":
            print("\n".join(queue_progress.park(args.queue)) or "no unfinished queue run to park")
            return 0
        if args.action == "unpark":
            said, commits = queue_progress.unpark(args.queue)
            print("\n".join(said) or "nothing parked in data/queue_progress")
            if commits:
                print("resume them with:\n" + queue_progress.resume_hint(commits))
            return 0
        runs.committed_code()
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        hint = ("\nTo go on developing meanwhile, run the queue from a separate `git worktree` "
                "checkout (python -m fatlib records run --help).") if isinstance(e, RuntimeError) else ""
        print(f"python -m fatlib records {args.action}: {e}{hint}", file=sys.stderr)
        return 2
    try:
        runs.run_queue(args.queue, budget_minutes=args.budget, only=args.only)
    except (ValueError, FileNotFoundError) as e:
        print(f"python -m fatlib records run: {e}", file=sys.stderr)
        return 2
    return 0


def _delegate(module: str):
    def run(argv) -> int:
        import importlib

        return importlib.import_module(f"fatlib.{module}").main(argv) or 0
    return run


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "records": cmd_records, "bench": _delegate("bench"),
            "book": _delegate("book")}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        print(f"\ncommands: {', '.join(COMMANDS)}; `python -m fatlib COMMAND --help` for its flags")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
