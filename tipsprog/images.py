"""CT and mask reading: any format (NIfTI, NRRD, MHA, a DICOM series) to the canonical LPS orientation, checked
for what would silently give a wrong image (missing slices, non-finite voxels), and resampling."""

from __future__ import annotations

import copyreg
import gzip
import io
import locale
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from tipsprog.errors import InputError


def _pickled_image(image: sitk.Image) -> tuple:
    """Pickle an image with its voxels copied into the pickle. At protocol 5 (Dask's) SimpleITK hands pickle an
    out-of-band buffer that points into the image without keeping it alive, and Dask reads that buffer later (on its
    event loop, or when it sends it): an image dropped meanwhile, such as a job's label image once a lazy job list
    moves on, arrived as whatever reused its memory, usually the next patient's mask."""
    return image.__reduce_ex__(4)  # SimpleITK's own state, with a bytes copy of the voxels


copyreg.pickle(sitk.Image, _pickled_image)


def read_ct(path: str | Path, series_uid: str | None = None) -> sitk.Image:
    """Read a CT file or DICOM series folder (its series `series_uid` if given) as a 3-D float32 image oriented LPS;
    every voxel must be finite."""
    image = sitk.Cast(read_image(path, series_uid), sitk.sitkFloat32)
    non_finite = int((~np.isfinite(sitk.GetArrayViewFromImage(image))).sum())
    if non_finite:
        raise InputError(f"{path}: CT has {non_finite} non-finite (NaN or infinite) voxels")
    return canonical(image)


NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}
READ_CHUNK = 1 << 24


def _nifti_float_payload(stream: io.BufferedIOBase) -> np.dtype | None:
    """Position a NIfTI stream at its voxels and return their dtype if they are floats (None otherwise)."""
    header = stream.read(540)
    for order in "<>":
        size = int(np.frombuffer(header[:4], f"{order}i4")[0])
        if size in (348, 540):
            break
    else:
        return None
    datatype = int(np.frombuffer(header[70:72] if size == 348 else header[12:14], f"{order}i2")[0])
    if datatype not in NIFTI_FLOAT_TYPES:
        return None
    offset = (
        int(np.frombuffer(header[108:112], f"{order}f4")[0])
        if size == 348
        else int(np.frombuffer(header[168:176], f"{order}i8")[0])
    )
    stream.seek(offset)
    return np.dtype(f"{order}{NIFTI_FLOAT_TYPES[datatype]}")


def _stored_non_finite(path: Path) -> int:
    """One pass over a CT file's bytes: a truncated or corrupt .gz is an error (SimpleITK would return a half-empty
    image), and NaN or infinite voxels stored in a float NIfTI (which ITK's reader turns into zeros) are counted."""
    nifti, compressed = path.name.lower().endswith((".nii", ".nii.gz")), path.suffix.lower() == ".gz"
    if not (nifti or compressed):
        return 0
    try:
        with (gzip.open if compressed else open)(path, "rb") as stream:
            dtype = _nifti_float_payload(stream) if nifti else None
            if dtype is None and not compressed:
                return 0
            count = 0
            while chunk := stream.read(READ_CHUNK):
                if dtype is not None:
                    count += int(
                        (~np.isfinite(np.frombuffer(chunk[: len(chunk) // dtype.itemsize * dtype.itemsize], dtype))).sum()
                    )
            return count
    except (EOFError, OSError, zlib.error) as err:
        raise InputError(f"{path}: cannot read CT (compressed file is truncated or corrupt: {err})") from None


SERIES_DESCRIPTION, IMAGE_POSITION, IMAGE_ORIENTATION = "0008|103e", "0020|0032", "0020|0037"
SLICE_GAP_TOLERANCE = 0.1  # a gap this far (relative) from the series' median gap means a missing slice
SAME_POSITION_MM = 1e-3


def _dicom_header(path: str) -> sitk.ImageFileReader:
    """A DICOM file's reader with its header read (no pixels)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    return reader


def _series_label(folder: Path, uid: str) -> str:
    """A series as 'UID (N slices, 'description')' for error messages."""
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
    header = _dicom_header(files[0])
    description = header.GetMetaData(SERIES_DESCRIPTION).strip() if header.HasMetaDataKey(SERIES_DESCRIPTION) else ""
    return f"{uid} ({len(files)} slices" + (f", {description!r})" if description else ")")


def series_files(folder: Path, series_uid: str | None) -> tuple[str, list[str]]:
    """The UID and files of the folder's only DICOM series, or of the chosen one; never a silent pick among several."""
    uids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if not uids:
        raise InputError(f"{folder}: folder holds no DICOM series")
    if series_uid is not None and series_uid not in uids:
        raise InputError(
            f"{folder}: DICOM series {series_uid} is not in the folder, which holds "
            + ", ".join(_series_label(folder, uid) for uid in uids)
        )
    if series_uid is None and len(uids) > 1:
        raise InputError(
            f"{folder}: folder holds {len(uids)} DICOM series; choose one with the cohort column "
            "'series_uid' (predict: --series): " + ", ".join(_series_label(folder, uid) for uid in uids)
        )
    uid = series_uid or uids[0]
    return uid, list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))


def _slice_positions(files: list[str]) -> np.ndarray | None:
    """Each slice file's position along the series' normal in mm, sorted (None when a file lacks the tags)."""
    positions, normal = [], None
    for file in files:
        header = _dicom_header(file)
        if not (header.HasMetaDataKey(IMAGE_POSITION) and header.HasMetaDataKey(IMAGE_ORIENTATION)):
            return None
        if normal is None:
            orientation = np.array(header.GetMetaData(IMAGE_ORIENTATION).split("\\"), dtype=float)
            normal = np.cross(orientation[:3], orientation[3:])
        positions.append(float(np.dot(np.array(header.GetMetaData(IMAGE_POSITION).split("\\"), dtype=float), normal)))
    return np.sort(positions)


def _check_slice_spacing(folder: Path, uid: str, files: list[str]) -> None:
    """Raise when two slices share a position (duplicate file) or a gap departs from the median one (missing file)."""
    positions = _slice_positions(files)
    if positions is None or len(positions) < 2:
        return
    gaps = np.diff(positions)
    series = f"{folder}: DICOM series {uid}"
    if (gaps < SAME_POSITION_MM).any():
        at = positions[int(np.argmax(gaps < SAME_POSITION_MM))]
        raise InputError(f"{series} has two slices at {at:.1f} mm: a slice file is duplicated")
    median = float(np.median(gaps))
    uneven = np.abs(gaps - median) > SLICE_GAP_TOLERANCE * median
    if uneven.any():
        index = int(np.argmax(uneven))
        cause = "a slice file is missing" if gaps[index] > median else "slices are unevenly spaced"
        raise InputError(
            f"{series} has a gap between slices at {positions[index]:.1f} and {positions[index + 1]:.1f} mm "
            f"(spacing {median:.3g} mm elsewhere): {cause}"
        )


@contextmanager
def _gdcm_calls() -> Iterator[None]:
    """Around GDCM's DICOM reading: ITK's multi-line warnings off (its 'Non uniform sampling' note for a small
    jitter), and the process locale put back (GDCM leaves it 'C', after which Python reads text files as ASCII)."""
    saved_locale = locale.setlocale(locale.LC_ALL)
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
        locale.setlocale(locale.LC_ALL, saved_locale)


def _read_dicom_series(folder: Path, series_uid: str | None) -> sitk.Image:
    """Read one DICOM series of a folder (the only one, or the chosen one) after checking its slice spacing."""
    with _gdcm_calls():
        uid, files = series_files(folder, series_uid)
        _check_slice_spacing(folder, uid, files)
        return sitk.ReadImage(files)


def read_image(path: str | Path, series_uid: str | None = None) -> sitk.Image:
    """Read a CT file or DICOM series folder (its series `series_uid` if given) as stored (pixel type and
    orientation), checked to be a 3-D scalar (and, for NIfTI, to store no NaN or infinite voxels, which ITK would
    read as zeros)."""
    path = Path(path)
    stored_non_finite = 0
    if not path.exists():
        raise InputError(f"{path}: CT file not found")
    if series_uid is not None and not path.is_dir():
        raise InputError(f"{path}: a DICOM series ({series_uid}) is chosen, but the CT is a file, not a DICOM folder")
    try:
        if path.is_dir():
            image = _read_dicom_series(path, series_uid)
        else:
            stored_non_finite = _stored_non_finite(path)
            image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else "unreadable"
        raise InputError(f"{path}: cannot read CT ({first_line})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: CT must be a 3-D scalar image, got {image.GetDimension()}-D")
    if min(image.GetSize()) < 2:
        size = "×".join(map(str, image.GetSize()))
        raise InputError(f"{path}: CT must have at least 2 voxels along every axis, got {size}")
    if stored_non_finite:
        raise InputError(f"{path}: CT has {stored_non_finite} non-finite (NaN or infinite) voxels")
    return image


def canonical(image: sitk.Image) -> sitk.Image:
    """Reorient an image to LPS so that array axes (z, y, x) mean (I→S, A→P, R→L)."""
    return sitk.DICOMOrient(image, "LPS")


FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def resample_to_spacing(
    image: sitk.Image, spacing_mm: tuple[float, float, float], interpolator: int, default: float
) -> sitk.Image:
    """Resample onto a grid of the given spacing covering the same physical extent and orientation."""
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing_mm)]
    origin = image.TransformContinuousIndexToPhysicalPoint([(t / s - 1.0) / 2.0 for s, t in zip(image.GetSpacing(), spacing_mm)])
    return sitk.Resample(
        image, size, sitk.Transform(), interpolator, origin, spacing_mm, image.GetDirection(), default, image.GetPixelID()
    )


def antialiased_resample(image: sitk.Image, spacing_mm: tuple[float, float, float], default: float) -> sitk.Image:
    """Resample to `spacing_mm` (linear) after the Gaussian blur that a coarser grid calls for.

    The blur's FWHM along each axis is sqrt(target² − input²), so every input sampled finer than the target
    reaches the same effective resolution (no aliasing); axes already at or above the target are not blurred.
    This is what makes segmentation nearly independent of the grid a scan was stored on. The blurred image is
    band-limited, so linear interpolation is enough (a cubic B-spline differs by ~1 HU and costs 60 times more).
    """
    fwhm = [np.sqrt(max(t * t - s * s, 0.0)) for s, t in zip(image.GetSpacing(), spacing_mm)]
    variance = [(w / FWHM_PER_SIGMA) ** 2 for w in fwhm]
    if max(variance) > 0:
        image = sitk.DiscreteGaussian(sitk.Cast(image, sitk.sitkFloat32), variance, 32, 0.01, True)
    return resample_to_spacing(image, spacing_mm, sitk.sitkLinear, default)


def read_mask(path: str | Path, reference: sitk.Image) -> sitk.Image:
    """Read a label image and resample it onto the reference grid in physical space."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: mask file not found")
    try:
        mask = sitk.ReadImage(str(path))
    except RuntimeError:
        raise InputError(f"{path}: cannot read mask") from None
    if mask.GetDimension() != 3:
        raise InputError(f"{path}: mask must be 3-D, got {mask.GetDimension()}-D")
    on_reference = sitk.Resample(
        sitk.Cast(mask, sitk.sitkUInt8), reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
    )
    if not sitk.GetArrayViewFromImage(on_reference).any() and sitk.GetArrayViewFromImage(mask).any():
        raise InputError(f"{path}: mask lies outside the CT (no labelled voxel overlaps it in physical space)")
    return on_reference
