"""Command line: `python -m training {train,evaluate,inspect}`. Flags map onto TrainConfig fields;
no logic lives here beyond wiring. `torchrun ... -m training train` runs the same command on
every rank (see `distributed`)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from tqdm.contrib.logging import logging_redirect_tqdm

from model_store import (
    ArtifactError,
    Manifest,
    Publication,
    list_versions,
    load_version,
    one_line,
    read_artifact,
    single_domain_parameters,
    version_path,
)

from . import distributed
from .checkpoint import mark_published, published_as
from .config import PRECISIONS, TrainConfig
from .data import AUGMENTS, NORMALIZATIONS
from .domains import AddDomainSettings, add_domain, remove_domain
from .evaluate import accuracy, model_totals, results_table
from .publish import publish_result
from .report import SKIPPABLE, Report, plot, render_markdown
from .sources import SourceError
from .stored_data import stored_domains
from .trainer import train

log = logging.getLogger("training")
PRESETS = Path(__file__).parent / "presets"


def _store_args(p: argparse.ArgumentParser, name_from_env: bool = True) -> None:
    p.add_argument(
        "--store",
        type=Path,
        default=Path(os.environ.get("BAP_STORE", "store")),
        help="model store folder (env BAP_STORE)",
    )
    if name_from_env:  # reading a model: the one the server serves is a sensible default
        p.add_argument(
            "--name",
            default=os.environ.get("BAP_MODEL"),
            help="model name in the store (env BAP_MODEL)",
        )
    else:  # publishing: never into the served model by accident of the environment
        p.add_argument("--name", help="model name to publish under (default: the config's name)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="pretrain, BAP-train, prune, evaluate and publish a version")
    what = t.add_mutually_exclusive_group()
    what.add_argument("--config", type=Path, help="JSON training config: the domains to train")
    what.add_argument(
        "--smoke",
        action="store_true",
        help="train TrainConfig's defaults instead: three tiny synthetic domains, to try the tool",
    )
    _store_args(t, name_from_env=False)
    t.add_argument(
        "--replace",
        action="store_true",
        help="publish even if the model already has versions: this run becomes its CURRENT",
    )
    t.add_argument(
        "--run-dir", type=Path, help="checkpoints and resolved config (default runs/<name>)"
    )
    t.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir from its checkpoint"
    )
    t.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
    t.add_argument(
        "--force",
        action="store_true",
        help="train a stage 2 too short to reach the budget, and publish even if the export "
        "had to cut a domain past the limits (see publish.py)",
    )
    t.add_argument(
        "--device",
        choices=distributed.DEVICES,
        default="auto",
        help="auto: this rank's GPU when CUDA is available, else the CPU",
    )
    g = t.add_argument_group("overrides of config fields")
    g.add_argument("--budget", type=float)
    g.add_argument("--budget-unit", choices=("macs", "params"))
    g.add_argument("--sharing", choices=("union", "intersection", "jaccard", "none"))
    g.add_argument("--epochs", type=float)
    g.add_argument("--pretrain-epochs", type=float)
    g.add_argument(
        "--backbone",
        help="start from these weights (safetensors or unpruned version folder); "
        "pretraining is skipped unless --pretrain-epochs is given",
    )
    g.add_argument("--threads", type=int)
    g.add_argument("--precision", choices=PRECISIONS, help="autocast dtype (fp16: loss scaling)")
    g.add_argument(
        "--sync-bn",
        action="store_true",
        default=None,
        help="several ranks: BN statistics of the global batch instead of each rank's shard",
    )
    g.add_argument("--seed", type=int)
    g.add_argument("--arch", help="resnet26_decathlon (default), resnet18, resnet34 or resnet50")
    g.add_argument(
        "--pretrained",
        type=Path,
        help="start from a torchvision or timm ResNet state dict (.pth or .safetensors)",
    )
    g.add_argument(
        "--augment",
        choices=AUGMENTS,
        help="training transform (default: random_resized_crop with --pretrained, else crop_flip)",
    )
    g.add_argument(
        "--normalize",
        choices=NORMALIZATIONS,
        help="input statistics (default: imagenet with --pretrained, else each domain's data)",
    )
    g.add_argument(
        "--workers",
        type=int,
        help="processes decoding image files per batch (0: in the trainer; default min(4, cores))",
    )
    g.add_argument(
        "--data-root",
        type=Path,
        help="the folder that every domain entry with a `root` reads (e.g. a preset's datasets)",
    )

    r = sub.add_parser("report", help="baselines and BAP at several budgets -> results.md + plot")
    r.add_argument(
        "--config",
        type=Path,
        default=PRESETS / "embedded.json",
        help="training config (default: the bundled model's, so the report measures what ships)",
    )
    r.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    r.add_argument(
        "--epochs-scale",
        type=_budget_factor,
        nargs="*",
        metavar="BUDGET=FACTOR",
        help="stage 2 FACTOR times the config's epochs at BUDGET, for BAP and (3) alike (default "
        f"{' '.join(f'{b}={f:g}' for b, f in DEFAULT_EPOCHS_SCALE.items())} where that budget "
        "is asked for: at 1.5 epochs beta 0.25 lost 5.8 points, at 3 it lost 2.6; the flag "
        "with no pair: no scaling)",
    )
    r.add_argument(
        "--backbone",
        type=Path,
        help="a stage-1 network to start every method from instead of pretraining one (e.g. a "
        "training run's pretrained.safetensors); the report then names it in place of stage 1",
    )
    r.add_argument(
        "--out", type=Path, default=Path("docs"), help="where results.md and the plot go"
    )
    r.add_argument(
        "--work-dir", type=Path, help="training runs (default: a new runs/report-<UTC time>)"
    )
    r.add_argument(
        "--resume", action="store_true", help="continue the report in --work-dir where it stopped"
    )
    r.add_argument(
        "--skip",
        nargs="+",
        choices=SKIPPABLE,
        default=[],
        help="leave out these ablations: (2) frozen backbone and (3) budget loss without "
        "sharing; (1) independent models and BAP always run",
    )
    r.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")

    q = sub.add_parser(
        "quantize", help="add int8 graphs to a version, their accuracy measured on the test sets"
    )
    _store_args(q)
    q.add_argument("--version", help="version to use (default CURRENT)")
    q.add_argument(
        "--calibration-images", type=int, default=512, help="training images per domain (512)"
    )

    b = sub.add_parser(
        "measure-bf16",
        help="measure a version's test accuracy through OpenVINO in bf16 (needed to serve bf16)",
    )
    _store_args(b)
    b.add_argument("--version", help="version to use (default CURRENT)")

    a = sub.add_parser(
        "add-domain", help="train one more domain onto a published version, the others untouched"
    )
    _store_args(a)
    a.add_argument("--domain", required=True, help="the new domain's name")
    a.add_argument("--source", help="its data source (see training/sources), e.g. folder")
    a.add_argument("--root", help="the source's folder, where it takes one")
    a.add_argument(
        "--config", type=Path, help="JSON source entry instead: {source, root, ...} (+ name)"
    )
    a.add_argument("--budget", type=float, help="its cost budget (default: the version's)")
    a.add_argument("--from", dest="from_version", help="version to start from (default CURRENT)")
    a.add_argument(
        "--grow",
        action="store_true",
        help="let it use filters pruning removed (the stored model grows by those it takes)",
    )
    a.add_argument(
        "--backbone", type=Path, help="unpruned backbone for --grow (default: the version's own)"
    )
    a.add_argument("--epochs", type=float, default=AddDomainSettings.epochs)
    a.add_argument("--recovery-epochs", type=float, default=AddDomainSettings.recovery_epochs)
    r2 = sub.add_parser(
        "remove-domain", help="publish a version without a domain and the filters only it used"
    )
    _store_args(r2)
    r2.add_argument("--domain", required=True, help="the domain to drop")
    r2.add_argument("--from", dest="from_version", help="version to start from (default CURRENT)")

    for name, text in (
        ("evaluate", "re-measure a stored version on its domains' test data"),
        ("inspect", "show a stored version's manifest"),
    ):
        s = sub.add_parser(name, help=text)
        _store_args(s)
        s.add_argument("--version", help="version to use (default CURRENT)")
        s.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _rooted(domains: list[dict[str, Any]], root: Path | None) -> list[dict[str, Any]] | None:
    """The domain entries with `root` set to `root` (absolute, so that the published version's
    recorded sources still find the data from any folder); None when no root is given."""
    if root is None:
        return None
    if not any("root" in d for d in domains):
        raise ValueError("--data-root: no domain entry of this config reads a root folder")
    return [{**d, "root": str(root.resolve())} if "root" in d else d for d in domains]


def cmd_train(args: argparse.Namespace) -> int:
    if not (args.config or args.smoke or args.resume):
        raise ValueError(
            "give --config FILE (the domains to train), or --smoke for the synthetic smoke run"
        )
    config = TrainConfig.load(args.config) if args.config else TrainConfig()
    overrides = dict(
        domains=_rooted(config.domains, args.data_root),
        name=args.name,
        budget=args.budget,
        budget_unit=args.budget_unit,
        sharing=args.sharing,
        epochs=args.epochs,
        pretrain_epochs=0.0
        if args.backbone and args.pretrain_epochs is None
        else args.pretrain_epochs,
        backbone=args.backbone,
        arch=args.arch,
        pretrained=str(args.pretrained.resolve()) if args.pretrained else None,
        threads=args.threads,
        augment=args.augment,
        normalize=args.normalize,
        workers=args.workers,
        precision=args.precision,
        sync_bn=args.sync_bn,
        seed=args.seed,
    )
    config = config.override(**overrides)
    run_dir = args.run_dir or Path("runs") / config.name
    published = published_as(run_dir) if args.resume else None
    if published is not None:  # resuming would publish the same run a second time
        raise FileExistsError(
            f"{run_dir}: this run finished and was published as {published}; nothing to "
            f"resume (start a new --run-dir to train again)"
        )
    if args.resume and not args.config:  # only the flags given are compared with the stored run
        config = TrainConfig.load_record(run_dir / "config.json").override(**overrides)
    if (versions := list_versions(args.store, config.name)) and not args.replace:
        raise FileExistsError(
            f"{args.store / config.name} already has versions {', '.join(versions)}; "
            f"this run would become its CURRENT version, served from the next reload. Pass "
            f"--replace to publish it there anyway, or --name for a new model"
        )
    ranks = distributed.setup(args.device)
    try:
        result = train(
            config,
            run_dir,
            args.resume,
            progress=not args.quiet,
            ranks=ranks,
            check_schedule=not args.force,
        )
    finally:
        distributed.teardown()
    if not ranks.main:
        return 0
    config = TrainConfig.load(run_dir / "config.json")  # what ran, resumed or not
    log.info(
        "evaluating %d domains on their test sets, then exporting and publishing to %s",
        len(result.data),
        args.store / config.name,
    )
    manifest, _ = publish_result(config, result, args.store, force=args.force)
    mark_published(run_dir, args.store / manifest.name / manifest.version)
    _print(results_table(manifest.domains, manifest.budget, manifest.budget_unit))
    _print(_totals_line(manifest.totals, len(manifest.domains)))
    _print(f"published {args.store / manifest.name / manifest.version}")
    return 0


DEFAULT_EPOCHS_SCALE = {0.25: 2.0}  # measured on the bundled config: docs/results.md


def _budget_factor(text: str) -> tuple[float, float]:
    """`0.25=2` -> (0.25, 2.0): a budget and the factor on its stage-2 epochs."""
    try:
        budget, factor = (float(x) for x in text.split("="))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected BUDGET=FACTOR, e.g. 0.25=2") from None
    if not (0 < budget <= 1 and factor > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: budget in (0, 1], factor > 0")
    return budget, factor


def cmd_report(args: argparse.Namespace) -> int:
    started = time.time()
    config = TrainConfig.load(args.config)
    if args.backbone is not None:
        if not args.backbone.is_file():
            raise SystemExit(f"--backbone {args.backbone}: no such file")
        config = config.override(backbone=str(args.backbone.resolve()), pretrain_epochs=0.0)
    if args.resume and args.work_dir is None:
        raise SystemExit("--resume needs the --work-dir of the report to continue")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    work_dir = args.work_dir or Path("runs") / f"report-{stamp}"
    if not args.resume and work_dir.exists() and any(work_dir.iterdir()):
        raise SystemExit(
            f"{work_dir} holds an earlier report: pass --resume, or another --work-dir"
        )
    if args.epochs_scale is None:
        scale = {b: f for b, f in DEFAULT_EPOCHS_SCALE.items() if b in args.budgets}
    else:
        scale = dict(args.epochs_scale)
        if unknown := sorted(set(scale) - set(args.budgets)):
            raise SystemExit(f"--epochs-scale names budgets {unknown} not in --budgets")
    report = Report(config, work_dir, progress=not args.quiet, resume=args.resume)
    rows = report.run(args.budgets, scale, frozenset(args.skip))
    args.out.mkdir(parents=True, exist_ok=True)
    single = single_domain_parameters(report.pretrained.spec)
    (args.out / "results.md").write_text(render_markdown(rows, config, single, started))
    plot(rows, args.out / "accuracy_vs_budget.png")
    _print(f"wrote {args.out / 'results.md'} and {args.out / 'accuracy_vs_budget.png'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    manifest, model = load_version(args.store, _name(args), args.version)
    batch = manifest.training.get("config", {}).get("eval_batch_size", TrainConfig.eval_batch_size)
    measured = {
        spec.name: accuracy(model, data, batch) for _, spec, data in stored_domains(manifest)
    }
    if args.json:
        _print(json.dumps({"version": manifest.version, "accuracy": measured}, indent=2))
        return 0
    for name, acc in measured.items():
        manifest.domains[name].accuracy = acc
    _print(results_table(manifest.domains, manifest.budget, manifest.budget_unit))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from .quantize import quantize_version  # ONNX Runtime's quantizer, only for this command

    if args.calibration_images < 1:
        raise ValueError("--calibration-images must be at least 1")
    publication, manifest = quantize_version(
        args.store, _name(args), args.version, args.calibration_images
    )
    _print(_derived_line(publication, manifest, "int8", "int8 graphs"))
    return 0


def cmd_measure_bf16(args: argparse.Namespace) -> int:
    from .bf16 import measure_bf16  # OpenVINO (the openvino extra), only for this command

    publication, manifest = measure_bf16(args.store, _name(args), args.version)
    _print(_derived_line(publication, manifest, "bf16", "bf16 accuracy (OpenVINO)"))
    return 0


def _derived_line(publication: Publication, manifest: Manifest, precision: str, what: str) -> str:
    """What a measuring command published, the figures, and where CURRENT stands."""
    record = manifest.precisions[precision]
    figures = ", ".join(
        f"{d} {record.accuracy_fp32[d]:.4f} -> {acc:.4f}" for d, acc in record.accuracy.items()
    )
    return (
        f"{manifest.name} {publication.version}: {manifest.provenance['derived_from']} + {what}; "
        f"test accuracy fp32 -> {precision}: {figures}; {_current_note(publication)}"
    )


def _current_note(publication: Publication) -> str:
    if publication.current == publication.version:
        return f"CURRENT = {publication.version} (reload the server to serve it)"
    return publication.note or (
        f"CURRENT stays {publication.current}; `python -m model_store set-current "
        f"{publication.version}` to serve it"
    )


def cmd_add_domain(args: argparse.Namespace) -> int:
    entry: dict[str, Any] = json.loads(args.config.read_text()) if args.config else {}
    if args.source:
        entry["source"] = args.source
    if args.root:
        entry["root"] = args.root
    if "source" not in entry:
        raise ValueError("give --source (and --root where the source reads a folder) or --config")
    entry["name"] = args.domain
    settings = AddDomainSettings(epochs=args.epochs, recovery_epochs=args.recovery_epochs)
    manifest, publication = add_domain(
        args.store,
        _name(args),
        entry,
        args.budget,
        args.from_version,
        settings,
        grow=args.grow,
        backbone=args.backbone,
    )
    added = manifest.domains[args.domain]
    record = manifest.training["add_domain"]
    if args.grow:
        g = record["grow"]
        before, after = g["parameters"]
        _print(
            f"published {manifest.name} {manifest.version}: +{args.domain} accuracy "
            f"{added.accuracy:.4f}, cost {added.cost_fraction:.3f}; the stored model grew by "
            f"{sum(g['filters_added'])} filters, {after - before:,} parameters "
            f"({4 * (after - before):,} bytes at fp32): {before:,} -> {after:,}; old domains' "
            f"MACs unchanged, outputs within {g['old_domains_max_abs_diff']:.2g}; "
            f"{_current_note(publication)}"
        )
        return 0
    _print(
        f"published {manifest.name} {manifest.version}: +{args.domain} accuracy "
        f"{added.accuracy:.4f}, cost {added.cost_fraction:.3f} of the single-domain network "
        f"(budget {record['budget']}), in {record['seconds']} s; every old domain bit-identical "
        f"to {record['from']}; {_current_note(publication)}"
    )
    return 0


def cmd_remove_domain(args: argparse.Namespace) -> int:
    manifest, publication = remove_domain(args.store, _name(args), args.domain, args.from_version)
    record = manifest.training["remove_domain"]
    _print(
        f"published {manifest.name} {manifest.version}: -{args.domain}, "
        f"{record['filters_removed']} filters only it used removed; the others' outputs within "
        f"{record['remaining_max_abs_diff']:.2g} of {record['from']}; "
        f"{_current_note(publication)}"
    )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    folder = version_path(args.store, _name(args), args.version)
    manifest, model = read_artifact(folder)
    spec = manifest.spec
    if args.json:
        _print(manifest.to_json())
        return 0
    _print(
        f"{folder}  format {manifest.format_version}  {spec.arch} width {spec.width} "
        f"input {spec.input_size}px"
    )
    _print(
        f"budget {manifest.budget} ({manifest.budget_unit})  "
        f"kept filters per block {list(spec.mid_channels or [])}"
    )
    _print(results_table(manifest.domains, manifest.budget, manifest.budget_unit))
    _print(_totals_line(model_totals(model), len(manifest.domains)))
    _print(f"provenance {json.dumps(manifest.provenance)}")
    return 0


def _name(args: argparse.Namespace) -> str:
    if not args.name:
        raise SystemExit("give --name (or set BAP_MODEL)")
    return args.name


def _totals_line(totals: dict[str, float], domains: int) -> str:
    return (
        f"stored parameters {int(totals['parameters']):,} = "
        f"{totals['parameters_vs_single_domain']:.3f} x one single-domain ResNet-26, "
        f"{totals['parameters_vs_independent']:.3f} x "
        f"{int(totals['independent_parameters']):,} for {domains} independent models"
    )


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")


COMMANDS = {
    "report": cmd_report,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "inspect": cmd_inspect,
    "quantize": cmd_quantize,
    "measure-bf16": cmd_measure_bf16,
    "add-domain": cmd_add_domain,
    "remove-domain": cmd_remove_domain,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    if not args.verbose:  # our own lines (what loaded, each phase and domain) unless --quiet
        log.setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    try:
        with logging_redirect_tqdm():  # log lines print above the progress bars, not through them
            return COMMANDS[args.command](args)
    except BrokenPipeError:  # the reader left (`... | head`): stop writing, without a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, ArtifactError, SourceError, OSError) as exc:
        sys.stderr.write(f"error: {args.command}: {one_line(exc)}\n")
        return 2
