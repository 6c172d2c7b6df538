"""embed stage: deep ROI embeddings from a self-supervised encoder or published pretrained weights."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from tipsprog import store
from tipsprog.devices import resolve_device
from tipsprog.embed.encoders import RoiEncoder, load_encoder
from tipsprog.embed.ssl import FitSettings, build_ssl_network, fit_ssl, save_ssl_weights, ssl_fitted_on
from tipsprog.errors import InputError
from tipsprog.journal import TrainingJournal
from tipsprog.manifest import BlockEntry
from tipsprog.outputs import file_sha256, verified_file, writes_output
from tipsprog.parallel import map_ordered
from tipsprog.tables import read_id_list
from tipsprog.transductive import fitted_attr

EMBED_ROIS = ("liver", "spleen")
POOLINGS = ("mean", "mean+max")

__all__ = [
    "EMBED_ROIS",
    "POOLINGS",
    "EmbedOptions",
    "FitSettings",
    "embed_crops",
    "embedding_block",
    "random_encoder",
    "run_embed",
    "load_encoder",
]


def masked_pool(feature_map: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Mask-weighted mean (and max inside the mask) of a [B, C, d, h, w] map; the mask is pooled to its grid."""
    depth, height, width = feature_map.shape[2:]
    weights = F.adaptive_avg_pool3d(mask, (depth, height, width))
    mean = (feature_map * weights).sum(dim=(2, 3, 4)) / weights.sum(dim=(2, 3, 4)).clamp_min(1e-3)
    if pooling == "mean":
        return mean
    inside = weights >= 0.5 * weights.amax(dim=(2, 3, 4), keepdim=True).clamp_min(1e-6)
    peak = feature_map.masked_fill(~inside, float("-inf")).amax(dim=(2, 3, 4))
    return torch.cat([mean, peak], dim=1)


@torch.no_grad()
def embed_crops(
    encoder: RoiEncoder,
    crops: np.ndarray | h5py.Dataset,
    device: torch.device,
    pooling: str = "mean",
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Pooled features of [N, 2, D, H, W] crops of one ROI (an array, or a store dataset read batch by batch), in
    batches (progress gets each batch's size); AMP on CUDA."""
    encoder = encoder.to(device).eval()
    pooled = []
    for start in range(0, len(crops), batch_size):
        batch = torch.from_numpy(crops[start : start + batch_size].astype(np.float32)).to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            feature_map = encoder(batch)
        pooled.append(masked_pool(feature_map.float(), batch[:, 1:2], pooling).cpu().numpy())
        if progress:
            progress(len(batch))
    return np.concatenate(pooled)


def embedding_block(
    encoder: RoiEncoder,
    crops_by_roi: dict[str, np.ndarray | h5py.Dataset],
    device: torch.device,
    pooling: str,
    provenance: dict[str, str],
    batch_size: int = 16,
    progress: Callable[[float], None] | None = None,
) -> store.FeatureBlock:
    """Embeddings of every ROI side by side, named embed-<encoder>/<roi>/<k>, grouped by ROI and pooling."""
    roi_progress = (lambda count: progress(count / len(EMBED_ROIS))) if progress else None
    values = {roi: embed_crops(encoder, crops_by_roi[roi], device, pooling, batch_size, roi_progress) for roi in EMBED_ROIS}
    return _block(encoder, values, pooling, provenance)


def _block(encoder: RoiEncoder, values: dict[str, np.ndarray], pooling: str, provenance: dict[str, str]) -> store.FeatureBlock:
    """The feature block of each ROI's pooled features [N, F], side by side in EMBED_ROIS order."""
    names, groups = [], []
    extractor = f"embed-{encoder.name}"
    kinds = pooling.split("+")
    for roi in EMBED_ROIS:
        width = values[roi].shape[1]
        names += [f"{extractor}/{roi}/{k}" for k in range(width)]
        groups += [f"{roi}/{extractor}/{kind}" for kind in kinds for _ in range(width // len(kinds))]
    attrs = {
        "extractor": extractor,
        "encoder": encoder.name,
        "pooling": pooling,
        "weights_report": encoder.report.summary(),
        **provenance,
    }
    return store.FeatureBlock(np.concatenate([values[roi] for roi in EMBED_ROIS], axis=1), names, groups, attrs)


@dataclass(frozen=True)
class EmbedJob:
    """One batch of a segment store's patients to embed on a Dask worker: the store, the rows, the encoder with its
    weights file (workers must see the same paths), the pooling and the device."""

    seg_path: str
    start: int
    stop: int
    encoder: str
    weights: str
    weights_sha256: str
    pooling: str
    device: str


@lru_cache(maxsize=2)
def _worker_encoder(name: str, weights: str, weights_sha256: str) -> RoiEncoder:
    """An encoder loaded once per worker process (the digest keys the cache: a rewritten file is loaded again)."""
    return load_encoder(name, Path(weights))


def embed_rows(job: EmbedJob) -> dict[str, np.ndarray]:
    """Each ROI's pooled features of the job's rows, read from the store by the worker: one forward pass per ROI,
    the batch a local run makes of the same rows."""
    encoder = _worker_encoder(job.encoder, job.weights, job.weights_sha256)
    with store.open_store(job.seg_path) as seg:
        crops = {roi: seg[f"segment/crops/{roi}"][job.start : job.stop] for roi in EMBED_ROIS}
    device = resolve_device(job.device)
    return {roi: embed_crops(encoder, crops[roi], device, job.pooling, job.stop - job.start) for roi in EMBED_ROIS}


def embedding_block_on_cluster(
    encoder: RoiEncoder,
    seg_path: Path,
    patients: int,
    options: EmbedOptions,
    weights: Path,
    provenance: dict[str, str],
    progress: Callable[[float], None] | None = None,
) -> store.FeatureBlock:
    """embedding_block for a segment store's patients, in batches of options.batch_size run on the Dask cluster at
    options.scheduler."""
    jobs = [
        EmbedJob(
            str(Path(seg_path).resolve()),
            start,
            min(start + options.batch_size, patients),
            encoder.name,
            str(Path(weights).resolve()),
            provenance["weights_sha256"],
            options.pooling,
            options.device,
        )
        for start in range(0, patients, options.batch_size)
    ]
    parts = []
    for job, part in zip(jobs, map_ordered(embed_rows, jobs, 1, options.scheduler)):
        parts.append(part)
        if progress:
            progress(job.stop - job.start)
    return _block(
        encoder, {roi: np.concatenate([part[roi] for part in parts]) for roi in EMBED_ROIS}, options.pooling, provenance
    )


def random_encoder(seed: int = 0) -> RoiEncoder:
    """The ssl network with random weights: the baseline a pre-trained encoder must beat."""
    torch.manual_seed(seed)
    return RoiEncoder("ssl", build_ssl_network().eval())


def _fit_digest(training: np.ndarray, settings: FitSettings, device: torch.device, fitted_on: list[str]) -> str:
    """sha256 of what pre-training depends on: its settings, the device type, the patients and their training crops."""
    digest = hashlib.sha256(
        json.dumps({**asdict(settings), "device": device.type, "patients": fitted_on}, sort_keys=True).encode("utf-8")
    )
    digest.update(np.ascontiguousarray(training).data)
    return digest.hexdigest()


@contextmanager
def _segment_store(
    seg_path: Path,
) -> Iterator[tuple[list[str], list[str], tuple[list[str], list[str]], dict[str, str], dict[str, h5py.Dataset]]]:
    """Patients, centers, QC (status, reasons), segmentation provenance and the ROI crop datasets of a segment store,
    read batch by batch while the store is open."""
    with store.open_store(seg_path) as seg:
        if "segment/crops" not in seg:
            raise InputError(f"{seg_path}: not a segment store (no /segment/crops)")
        yield (
            store.read_patients(seg),
            store.read_centers(seg),
            store.read_qc(seg),
            store.segment_provenance(seg),
            {roi: seg[f"segment/crops/{roi}"] for roi in EMBED_ROIS},
        )


def _fit_rows(ids: list[str], usable: np.ndarray, seg_path: Path, fit_ids: Path | None) -> np.ndarray:
    """Rows whose crops pre-train the encoder: the usable scans, of the --fit-ids patients if given."""
    rows = usable.copy()
    if fit_ids is not None:
        rows &= np.isin(ids, read_id_list(fit_ids, ids, str(seg_path)))
    if rows.sum() < 2:
        chosen = f" among the patients of {fit_ids}" if fit_ids is not None else ""
        raise InputError(f"{seg_path}: fewer than 2 usable scans{chosen} to train the encoder on")
    return rows


@dataclass(frozen=True)
class EmbedOptions:
    """How `embed` runs: the encoder and its weights file, whether to pre-train it here (on which patients, with
    which settings), the pooling, the device and batch size, whether to resume, and the Dask cluster that embeds
    (pre-training runs here)."""

    encoder: str = "ssl"
    fit: bool = False
    fit_ids: Path | None = None
    weights: Path | None = None
    fit_settings: FitSettings = field(default_factory=FitSettings)
    pooling: str = "mean"
    device: str = "auto"
    batch_size: int = 16
    resume: bool = False
    scheduler: str | None = None


@writes_output("store")
def run_embed(
    seg_path: Path,
    out: Path,
    options: EmbedOptions = EmbedOptions(),
    fit_progress: Callable[[int, float], None] | None = None,
    progress: Callable[[float], None] | None = None,
    notes: Callable[[str], None] | None = None,
) -> tuple[Path, str]:
    """Embed every patient of a segment store into a store; with `options.fit`, pre-train the ssl encoder first (on
    the patients of `options.fit_ids` only, if given). The patients it was pre-trained on go into the weights file
    and the block.

    Pre-training saves its state to `<out>.partial` every few seconds; with `options.resume` it continues from
    there when the settings and the training crops are the same. Returns the weights file used and the loader's
    report (architecture, ignored tensors).
    """
    _check(options)
    device = resolve_device(options.device)
    weights = options.weights or (out.with_suffix(".pt") if options.encoder == "ssl" else None)
    if not options.fit:
        encoder = load_encoder(options.encoder, weights)
    assert weights is not None  # load_encoder refuses None, and --fit (ssl only) got its default above
    with _segment_store(seg_path) as (ids, centers, (status, reasons), segment_provenance, crops):
        usable = np.array([s == "ok" for s in status])
        if options.fit:
            rows = _fit_rows(ids, usable, seg_path, options.fit_ids)
            fitted_on = [pid for pid, chosen in zip(ids, rows) if chosen]
            training = np.concatenate([crops[roi][()][rows] for roi in EMBED_ROIS])
            digest = _fit_digest(training, options.fit_settings, device, fitted_on)
            journal = TrainingJournal(out, digest, options.resume, notes)
            save_ssl_weights(fit_ssl(training, options.fit_settings, device, fit_progress, journal), weights, fitted_on)
            del training
            encoder = load_encoder("ssl", weights)
        provenance = {"weights_sha256": file_sha256(weights), "weights_path": str(Path(weights).resolve()), **segment_provenance}
        if options.encoder == "ssl":
            provenance["encoder_fitted_on"] = fitted_attr(ssl_fitted_on(weights))
        if options.scheduler:
            block = embedding_block_on_cluster(encoder, seg_path, len(ids), options, weights, provenance, progress)
        else:
            block = embedding_block(encoder, crops, device, options.pooling, provenance, options.batch_size, progress)
    block.values[~usable] = np.nan
    with store.create_store(out, ids, centers) as h5:
        store.write_features(h5, block.attrs["extractor"], block)
        store.write_qc(h5, status, reasons)
    if options.fit:
        journal.discard()
    return Path(weights), encoder.report.summary()


def _check(options: EmbedOptions) -> None:
    """Refuse options that cannot go together, one line each."""
    if options.pooling not in POOLINGS:
        raise InputError(f"--pool {options.pooling}: choose one of {', '.join(POOLINGS)}")
    if options.fit and options.encoder != "ssl":
        raise InputError(f"--fit trains the ssl encoder only; --encoder {options.encoder} loads published weights")
    if options.fit_ids is not None and not options.fit:
        raise InputError(f"--fit-ids {options.fit_ids}: chooses the patients --fit pre-trains the encoder on; give --fit too")


def manifest_entry(name: str, block: store.FeatureBlock) -> tuple[dict, dict[str, Path]]:
    """What a bundle records to embed a new scan like this block: the encoder, the pooling and the weights file,
    copied into the bundle as `<block name><suffix>` once checked unchanged since the block was written."""
    weights = f"{name}{Path(block.attrs['weights_path']).suffix}"
    source = verified_file(Path(block.attrs["weights_path"]), block.attrs["weights_sha256"])
    return {"encoder": block.attrs["encoder"], "pooling": block.attrs["pooling"], "weights": weights}, {weights: source}


def replay(entry: BlockEntry, bundle_path: Path, crops: dict[str, np.ndarray], device: torch.device) -> store.FeatureBlock:
    """New scans' embeddings (their ROI crops stacked) with the bundle's encoder, weights and pooling."""
    if entry.encoder is None or entry.weights is None:
        raise InputError(f"{bundle_path}: an embedding block without its encoder or weights in bundle.yaml")
    encoder = load_encoder(entry.encoder, bundle_path / entry.weights)
    return embedding_block(encoder, crops, device, entry.pooling or "mean", {}, batch_size=1)
