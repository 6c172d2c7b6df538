"""The `tipsprog` command line: parse arguments, call the stage, print a summary. No logic here."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from tipsprog import __version__
from tipsprog.errors import InputError
from tipsprog.parallel import default_workers
from tipsprog.registry import ENCODERS, FUSION_MODELS, SEGMENTATION_BACKENDS
from tipsprog.store import ROI_LABELS

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="CT + clinical prognosis after TIPS: survival, overt HE and portal pressure gradient.",
)
console = Console(stderr=True)
QUIET = typer.Option(False, "--quiet", "-q", help="Print no progress or summary.")
RESUME = typer.Option(
    False,
    "--resume",
    help="Continue an interrupted run from OUT.partial: what it finished with the same settings and inputs is reused.",
)
WORKERS = typer.Option(None, "--workers", help="Parallel processes (default: all cores).")
DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda.")
SCHEDULER = typer.Option(
    None,
    "--scheduler",
    help="Dask scheduler address (tcp://HOST:PORT) to run patients on (its workers must see the same file paths).",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tipsprog {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version.")) -> None:
    """tipsprog: segment → radiomics → embed → fuse-train → evaluate → predict, with HDF5 stores between."""


def guarded(command: Callable) -> Callable:
    """Exit 2 with one line for bad input, 1 with one line for an internal failure."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except InputError as err:
            console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[red]interrupted[/red]: no output was written")
            raise typer.Exit(130) from None
        except Exception as err:  # the last line of defence: one line, not a trace
            if os.environ.get("TIPSPROG_DEBUG"):
                raise
            console.print(
                f"[red]internal error:[/red] {type(err).__name__}: {escape(str(err))} (set TIPSPROG_DEBUG=1 for a trace)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper


class RateColumn(ProgressColumn):
    """Items per minute, e.g. '12.5 patients/min'."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        """The task's current speed per minute (blank until there is one)."""
        return Text(f"{task.speed * 60:.1f} {self.unit}/min" if task.speed else "")


@contextmanager
def progress_bar(description: str, total: int | None, quiet: bool) -> Iterator[Callable[..., None]]:
    """A rich progress bar; yields a callback that advances it (and may update its text). No bar for no work."""
    if quiet or total == 0:
        yield lambda *args, **kwargs: None
        return
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn("patients"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)

        def advance(*_args, text: str | None = None, steps: float = 1, **_kwargs) -> None:
            bar.update(task, advance=steps, description=f"{description} {text}" if text else None)

        yield advance


def _workers(workers: int | None) -> int:
    return workers if workers and workers > 0 else default_workers()


def _patient_count(store_path: Path) -> int:
    """Patients in a store (a progress bar's total)."""
    from tipsprog.store import open_store, read_patients

    with open_store(store_path) as store:
        return len(read_patients(store))


def _count_rows(csv: Path) -> int | None:
    try:
        return max(sum(1 for line in csv.open(encoding="utf-8-sig") if line.strip()) - 1, 0)
    except OSError:
        return None


@app.command()
@guarded
def synth(
    out: Path = typer.Option(..., "--out", help="Output folder (must not exist)."),
    n: int = typer.Option(200, "--n", min=1, help="Patients."),
    centers: int = typer.Option(3, "--centers", min=1, help="Centers."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same cohort)."),
    size: str = typer.Option("small", "--size", help="small (64×64×32) or full (192×192×96) volumes."),
    prefix: str = typer.Option("", "--prefix", help="Prefix of patient IDs and center names (e.g. ext- for an external cohort)."),
    imaging_signal: bool = typer.Option(
        True,
        "--imaging-signal/--no-imaging-signal",
        help="Outcomes depend on the imaging (default) or on the clinical table only.",
    ),
    workers: int | None = WORKERS,
    quiet: bool = QUIET,
) -> None:
    """Generate a synthetic multi-center TIPS cohort with known truth."""
    from tipsprog.synth import CohortSpec, make_cohort
    from tipsprog.synth.phantom import GRID

    if size not in GRID:
        raise InputError(f"--size {size}: choose {' or '.join(GRID)}")
    if out.exists():
        raise InputError(f"{out}: already exists; choose a new folder")
    with progress_bar("synth", n, quiet) as advance:
        make_cohort(out, CohortSpec(n, centers, seed, size, prefix, imaging_signal), _workers(workers), advance)
    if not quiet:
        console.print(f"wrote {n} patients from {centers} centers to {out}")


def _finite_mean(values: np.ndarray, form: str) -> str:
    """The mean of the finite values, formatted ('–' when there are none)."""
    finite = values[np.isfinite(values)]
    return form.format(finite.mean()) if len(finite) else "–"


@app.command()
@guarded
def segment(
    cohort: Path = typer.Argument(..., help="cohort.csv (patient_id, ct[, center, label|liver_mask|spleen_mask])."),
    out: Path = typer.Option(..., "--out", help="Output segment store (.h5)."),
    backend: str = typer.Option("classic", "--backend", help=f"One of {SEGMENTATION_BACKENDS.choices()}."),
    fit: Path | None = typer.Option(None, "--fit", help="semi: LABELED.csv (cohort format with labels) to train on."),
    model: Path | None = typer.Option(
        None, "--model", help="semi: trained model to use, or where --fit saves it (default OUT.semi.pt)."
    ),
    iterations: int = typer.Option(1600, "--iterations", min=1, help="semi: training iterations with --fit."),
    fit_ids: Path | None = typer.Option(
        None,
        "--fit-ids",
        help="semi --fit: CSV with a patient_id column; train on "
        "these patients' scans only (every LABELED.csv patient listed too).",
    ),
    workers: int | None = WORKERS,
    device: str = DEVICE,
    strict: bool = typer.Option(False, "--strict", help="A failed patient stops the run."),
    scheduler: str | None = SCHEDULER,
    resume: bool = RESUME,
    quiet: bool = QUIET,
) -> None:
    """Segment liver, spleen and portal vein; store masks, ROI crops, volumes, QC flags and Dice vs reference."""
    from tipsprog.segment import SegmentOptions, run_segment
    from tipsprog.segment.semi import SemiSettings

    options = SegmentOptions(
        backend, _workers(workers), strict, fit, fit_ids, model, device, SemiSettings(iterations=iterations), resume, scheduler
    )
    with (
        progress_bar("semi: training", iterations if fit else 0, quiet) as trained,
        progress_bar("segment", _count_rows(cohort), quiet) as advance,
    ):
        results = run_segment(
            cohort, out, options, advance, lambda step, loss, dice: trained(text=f"loss {loss:.3f} val Dice {dice:.3f}")
        )
    if quiet:
        return
    failed = [r for r in results if r.status != "ok"]
    dice = np.array([r.dice for r in results])
    table = Table(title=f"segment ({backend}): {len(results) - len(failed)} ok, {len(failed)} failed")
    for column in ("ROI", "mean volume (mL)", "mean Dice vs reference", "flagged"):
        table.add_column(column)
    volumes = np.array([r.volumes for r in results])
    for index, roi in enumerate(ROI_LABELS):
        flagged = sum(any(f.startswith(f"{roi}:") for f in r.flags) for r in results)
        table.add_row(roi, _finite_mean(volumes[:, index], "{:.0f}"), _finite_mean(dice[:, index], "{:.3f}"), str(flagged))
    console.print(table)
    for result in failed[:5]:
        console.print(f"  {result.patient_id}: {escape(result.reason)}")


@app.command()
@guarded
def radiomics(
    seg: Path = typer.Argument(..., help="Segment store from `tipsprog segment`."),
    out: Path = typer.Option(..., "--out", help="Output radiomics store (.h5)."),
    params: str = typer.Option("fast", "--params", help="Preset (fast, standard, ibsi) or a pyradiomics YAML parameter file."),
    workers: int | None = WORKERS,
    scheduler: str | None = SCHEDULER,
    resume: bool = RESUME,
    quiet: bool = QUIET,
) -> None:
    """pyradiomics features per ROI, tagged roi/image-type/feature-class; each ROI cropped before extraction."""
    from tipsprog.radiomics import RadiomicsOptions, run_radiomics

    with progress_bar("radiomics", _patient_count(seg), quiet) as advance:
        records = run_radiomics(seg, out, RadiomicsOptions(params, _workers(workers), scheduler, resume), advance)
    if not quiet:
        failed = [r for r in records if r.status != "ok"]
        console.print(f"radiomics: {len(records) - len(failed)} ok, {len(failed)} failed → {out}")


@app.command()
@guarded
def embed(
    seg: Path = typer.Argument(..., help="Segment store from `tipsprog segment`."),
    out: Path = typer.Option(..., "--out", help="Output embedding store (.h5)."),
    encoder: str = typer.Option(
        "ssl",
        "--encoder",
        help=f"One of {ENCODERS.choices()}: ssl is pre-trained "
        "here (--fit); the others read their publisher's file (medicalnet: resnet_*_23dataset.pth, "
        "swinunetr: model_swinvit.pt, ctfm: model.safetensors).",
    ),
    fit: bool = typer.Option(
        False, "--fit", help="Pre-train the ssl encoder on this store's crops (masked-volume reconstruction)."
    ),
    fit_ids: Path | None = typer.Option(
        None,
        "--fit-ids",
        help="With --fit: CSV with a patient_id column; pre-train on "
        "these patients' crops only (e.g. leave held-out patients unseen).",
    ),
    weights: Path | None = typer.Option(
        None, "--weights", help="Encoder weights file (ssl: to write with --fit, default OUT.pt)."
    ),
    pool: str = typer.Option("mean", "--pool", help="Pooling inside each ROI mask: mean or mean+max."),
    epochs: int = typer.Option(40, "--epochs", min=1, help="Self-supervised epochs with --fit."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Crops per forward pass."),
    seed: int = typer.Option(0, "--seed"),
    device: str = DEVICE,
    resume: bool = RESUME,
    scheduler: str | None = SCHEDULER,
    quiet: bool = QUIET,
) -> None:
    """Deep ROI embeddings from a self-supervised or a published pretrained 3D encoder (with --scheduler, the
    embedding runs on a Dask cluster in batches of --batch-size patients; --fit pre-trains here)."""
    from tipsprog.embed import EmbedOptions, FitSettings, run_embed

    options = EmbedOptions(
        encoder, fit, fit_ids, weights, FitSettings(epochs=epochs, seed=seed), pool, device, batch_size, resume, scheduler
    )
    with progress_bar(f"embed: {encoder}", _patient_count(seg), quiet) as advance:
        written, report = run_embed(
            seg,
            out,
            options,
            lambda epoch, loss: advance(steps=0, text=f"pre-training epoch {epoch}/{epochs}, loss {loss:.4f}"),
            lambda patients: advance(steps=patients, text="embedding"),
            None if quiet else (lambda text: console.print(f"  {escape(text)}")),
        )
    if not quiet:
        console.print(f"embed: {out} ({encoder}: {report}; weights {written})")


@app.command("fuse-train")
@guarded
def fuse_train(
    stores: list[Path] = typer.Argument(None, help="Feature stores (radiomics.h5, embed.h5, …); none = clinical only."),
    clinical: Path = typer.Option(..., "--clinical", help="clinical.csv"),
    outcomes: Path = typer.Option(..., "--outcomes", help="outcomes.csv"),
    out: Path = typer.Option(..., "--out", help="Output bundle folder."),
    model: str | None = typer.Option(None, "--model", help=f"One of {FUSION_MODELS.choices()} (default concat; docs/models.md)."),
    folds: int | None = typer.Option(None, "--folds", help="CV folds (default 5)."),
    cv: str = typer.Option("kfold", "--cv", help="kfold (stratified by event and center) or center."),
    repeats: int | None = typer.Option(None, "--repeats", help="Repeated K-fold: reshuffles (default 1)."),
    test: Path | None = typer.Option(
        None,
        "--test",
        help="CSV with a patient_id column (e.g. a cohort.csv): patients held out of training and predicted once by the whole ensemble (held_out.h5).",
    ),
    modalities: str | None = typer.Option(
        None, "--modalities", help="Subset for ablations, e.g. clinical,radiomics (default: all the inputs provide)."
    ),
    config: Path | None = typer.Option(None, "--config", help="YAML config (see tipsprog/configs/default.yaml)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = DEVICE,
    resume: bool = RESUME,
    quiet: bool = QUIET,
) -> None:
    """Cross-validated multimodal fusion for survival, OHE and ppg_post; writes a model bundle."""
    from tipsprog.fusion import FuseTrainOptions, run_fuse_train
    from tipsprog.fusion.config import load_config

    settings = load_config(config, model=model, folds=folds, repeats=repeats)
    wanted = tuple(m.strip() for m in modalities.split(",")) if modalities else None
    options = FuseTrainOptions(settings, wanted, cv, seed, test, device, resume)
    metrics = run_fuse_train(
        stores or [], clinical, outcomes, out, options, None if quiet else (lambda text: console.print(f"  {escape(text)}"))
    )
    if not quiet:
        table = Table(title=f"fuse-train ({settings.model}, {cv}): out-of-fold Harrell's C")
        table.add_column("row")
        table.add_column("C (95% CI)")
        for name, value in metrics["harrell_c"].items():
            table.add_row(name, f"{value['estimate']:.3f} ({value['low']:.3f}–{value['high']:.3f})")
        for name, value in metrics.get("held_out", {}).get("harrell_c", {}).items():
            table.add_row(
                f"{name}, held out ({metrics['held_out']['patients']})",
                f"{value['estimate']:.3f} ({value['low']:.3f}–{value['high']:.3f})",
            )
        console.print(table)
        console.print(f"bundle → {out}")


@app.command()
@guarded
def evaluate(
    bundle: Path = typer.Argument(..., help="Model bundle from `tipsprog fuse-train`."),
    out: Path = typer.Option(..., "--out", help="Report folder."),
    truth: list[Path] | None = typer.Option(
        None, "--truth", help="truth.csv of a synthetic cohort (oracle row); repeat for an external cohort's."
    ),
    test: list[Path] | None = typer.Option(
        None, "--test", help="Feature store of an external cohort (repeat for several); with --clinical and --outcomes."
    ),
    clinical: Path | None = typer.Option(None, "--clinical", help="clinical.csv of the external cohort."),
    outcomes: Path | None = typer.Option(None, "--outcomes", help="outcomes.csv of the external cohort."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=10, help="Bootstrap resamples for 95% CIs."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json to stdout."),
    device: str = DEVICE,
    workers: int | None = WORKERS,
    quiet: bool = QUIET,
) -> None:
    """Metrics with 95% CIs beside the clinical scores (out-of-fold, held-out, external); report.html/.md, metrics.json, plots."""
    from tipsprog.evaluate import EvaluateOptions, ExternalCohort, run_evaluate

    if (test or clinical or outcomes) and not (clinical and outcomes):
        raise InputError("an external cohort needs both --clinical and --outcomes (and its feature stores as --test)")
    external = ExternalCohort(list(test or []), clinical, outcomes) if clinical and outcomes else None
    if not quiet:
        console.print(f"evaluate: {bootstrap} bootstrap resamples …")
    options = EvaluateOptions(list(truth or []), bootstrap, seed, _workers(workers), external, device)
    document = run_evaluate(bundle, out, options)
    if as_json:
        typer.echo(json.dumps(document, indent=2))
    if quiet:
        return
    from tipsprog.evaluate.render import SETTING_TITLES, ci

    for name, setting in document["settings"].items():
        table = Table(title=f"{SETTING_TITLES[name]}: {setting['patients']} patients, {setting['events']} deaths (95% CI)")
        for column in ("row", "Harrell's C", "C random ties", "Uno's C", "IBS"):
            table.add_column(column)
        for row, values in setting["survival"].items():
            table.add_row(row, *(ci(values[key]) for key in ("harrell_c", "harrell_c_random_ties", "uno_c", "integrated_brier")))
        console.print(table)
    for note in document["notes"]:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False)
    console.print(f"report → {out / 'report.html'}")


@app.command()
@guarded
def predict(
    ct: Path | None = typer.Option(None, "--ct", help="CT file or DICOM series folder (one patient)."),
    series: str | None = typer.Option(
        None,
        "--series",
        help="SeriesInstanceUID to read when the --ct folder "
        "holds several DICOM series (a cohort's go in its 'series_uid' column).",
    ),
    clinical: Path = typer.Option(..., "--clinical", help="Clinical CSV: one row, or the cohort's rows with --cohort."),
    model: Path = typer.Option(..., "--model", help="Model bundle folder."),
    cohort: Path | None = typer.Option(None, "--cohort", help="cohort.csv (patient_id, ct) for a batch; needs --out."),
    out: Path | None = typer.Option(None, "--out", help="Batch output folder: predictions.csv and predictions.jsonl."),
    save_masks: Path | None = typer.Option(None, "--save-masks", help="Folder for the ROI label images (NIfTI)."),
    overlay: Path | None = typer.Option(None, "--overlay", help="PNG of the masks on three CT slices (a folder for a batch)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON to stdout (docs/predict.md)."),
    trust: bool = typer.Option(False, "--trust", help="Use a bundle whose files no longer match their recorded sha256."),
    strict: bool = typer.Option(
        False,
        "--strict",
        help="Batch: a scan that cannot be used stops the run (default: its row carries the error and the others are predicted).",
    ),
    device: str = DEVICE,
    workers: int | None = WORKERS,
    scheduler: str | None = SCHEDULER,
    quiet: bool = QUIET,
) -> None:
    """Predict one patient or a cohort: risk, group, survival curve and 6/12/24-month survival, OHE, ppg_post,
    clinical scores, segmentation QC and the features that drove the risk."""
    from tipsprog.predict import PredictOptions, run_predict, run_predict_batch

    options = PredictOptions(save_masks, overlay, device, _workers(workers), trust, strict, scheduler)
    if cohort is not None:
        if out is None or ct is not None or series is not None:
            raise InputError(
                "--cohort needs --out (and no --ct or --series: a cohort's DICOM series go in its "
                "'series_uid' column): it writes predictions.csv and predictions.jsonl"
            )
        results = run_predict_batch(model, cohort, clinical, out, options)
        if as_json:
            typer.echo(json.dumps(results, indent=2))
        elif not quiet:
            failed = [r for r in results if "error" in r]
            console.print(
                f"predicted {len(results) - len(failed)} patients, {len(failed)} failed → "
                f"{out / 'predictions.csv'}, {out / 'predictions.jsonl'}"
            )
            for result in failed[:5]:
                console.print(f"  {result['patient_id']}: {escape(result['error'])}")
        return
    if series is not None and ct is None:
        raise InputError("--series chooses a DICOM series of the --ct folder; give --ct")
    result = run_predict(model, ct, clinical, options, series)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    elif not quiet:
        _print_prediction(result)


@app.command()
@guarded
def export(
    seg: Path = typer.Argument(..., help="Segment store from `tipsprog segment`."),
    out: Path = typer.Option(..., "--out", help="Output folder: <patient>_labels.nii.gz, label tables, <patient>_qc.png."),
    montage: bool = typer.Option(True, "--montage/--no-montage", help="Write a QC montage PNG per patient."),
    compartments: bool = typer.Option(
        True,
        "--compartments/--no-compartments",
        help="Add what the biomarkers measured (muscle and fat at L3, ascites; labels 4-7), recomputed from the CT.",
    ),
    dicom_seg: bool = typer.Option(
        False, "--dicom-seg", help="Also write <patient>_seg.dcm (DICOM SEG) for CTs read from a DICOM series (needs highdicom)."
    ),
    quiet: bool = QUIET,
) -> None:
    """Every patient's ROI masks as NIfTI on the grid of its CT as stored (for 3D Slicer, ITK-SNAP), with label
    tables and a QC montage."""
    from tipsprog.export import run_export

    exported = run_export(seg, out, montage, compartments, dicom_seg)
    if not quiet:
        console.print(f"exported the masks of {len(exported.patients)} patients → {out}")
    if dicom_seg and not quiet:
        console.print(
            f"DICOM SEG for {len(exported.dicom_seg)} of {len(exported.patients)} patients (a CT read from a DICOM series "
            "whose masks hold an ROI gets one)"
        )


@app.command()
@guarded
def info(
    file: Path = typer.Argument(..., help="A store (.h5), a --resume journal (OUT.partial) or a bundle folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of YAML-style text."),
) -> None:
    """What a store, journal or bundle holds: patients, feature blocks, QC counts, provenance, settings digests."""
    import yaml

    from tipsprog.info import describe

    described = describe(file)
    typer.echo(
        json.dumps(described, indent=2) if as_json else yaml.safe_dump(described, sort_keys=False, allow_unicode=True).rstrip()
    )


def _print_prediction(result: dict) -> None:
    """The human-readable summary of one prediction."""
    from tipsprog.predict import portal_vein_line

    out = Console()
    out.print(
        f"[bold]{result['patient_id']}[/bold]: risk {result['risk_score']['estimate']:.3f} "
        f"(percentile {result['risk_percentile']:.0f} of the training cohort), {result['risk_group']} risk"
    )
    for horizon, value in result["survival"].items():
        out.print(
            f"  survival at {horizon}: {value['estimate']:.1%} ({value['low']:.1%}–{value['high']:.1%} over {result['members']} members)"
        )
    ohe, ppg = result["ohe_probability"], result["ppg_post_mmhg"]
    out.print(f"  overt HE probability: {ohe['estimate']:.1%} ({ohe['low']:.1%}–{ohe['high']:.1%})")
    out.print(f"  ppg after TIPS: {ppg['estimate']:.1f} mmHg ({ppg['low']:.1f}–{ppg['high']:.1f})")
    out.print("  " + ", ".join(f"{k} {v:g}" for k, v in result["clinical_scores"].items() if k in ("FIPS", "MELD")))
    if result["segmentation"]:
        out.print(f"  segmentation: {result['segmentation']['status']} {result['segmentation']['volumes_ml']}")
        out.print(f"  {portal_vein_line(result['segmentation']['portal_vein'])}")
    for name, value in result["biomarkers"].items():
        shown = "not measured" if value["value"] is None else f"{value['value']:g}"
        rank = "" if value["percentile"] is None else f" (percentile {value['percentile']:.0f} of the training cohort)"
        out.print(escape(f"  {name}: {shown}{rank}"))  # the units' brackets are not markup
    if result["imputed"]:
        out.print(f"  imputed (training medians): {', '.join(result['imputed'])}")
    for warning in result["warnings"]:
        out.print(f"  [yellow]warning:[/yellow] {escape(warning)}")
    attribution = result["attribution"]
    out.print(
        f"  risk vs the training-fold mean patient: {attribution['risk_minus_baseline']:+.3f}, by modality "
        + ", ".join(f"{m} {v:+.3f}" for m, v in attribution["by_modality"].items())
    )
    for feature in attribution["top"][:5]:
        out.print(f"    {feature['modality']:<10} {feature['group']:<32} {feature['contribution']:+.3f}")


if __name__ == "__main__":
    sys.exit(app())
