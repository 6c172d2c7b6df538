"""DICOM Segmentation objects (SEG) of a patient's ROI masks, for a CT read from a DICOM series: a binary segment
per ROI found (liver, spleen, portal vein; SNOMED CT codes from pydicom's dictionary), one frame per source slice,
referencing the series it was made on, so that a PACS or 3D Slicer (QuantitativeReporting) shows it over the
scan. Written with highdicom, an optional extra (`pip install 'tipsprog[dicom-seg]'`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from tipsprog import __version__
from tipsprog.errors import InputError
from tipsprog.images import series_files
from tipsprog.store import ROI_LABELS

ROI_CODES = {"liver": "Liver", "spleen": "Spleen", "portal_vein": "PortalVein"}  # names in pydicom's SCT dictionary


def _source_slices(labels: sitk.Image, folder: Path, series_uid: str | None) -> tuple[list, np.ndarray]:
    """The series' slices (pydicom datasets) and the label frame of each, found by its position on the labels'
    grid (the CT's own grid, as read from the same series)."""
    import pydicom

    _, files = series_files(folder, series_uid)
    sources = [pydicom.dcmread(path) for path in files]
    array = sitk.GetArrayViewFromImage(labels)
    frames = []
    for source in sources:
        index = labels.TransformPhysicalPointToContinuousIndex([float(v) for v in source.ImagePositionPatient])
        frames.append(array[int(round(index[2]))])
    return sources, np.stack(frames)


def write_dicom_seg(labels: sitk.Image, folder: Path, series_uid: str | None, path: Path) -> list[str]:
    """Write the ROI labels on a DICOM series' own grid as a DICOM SEG at `path`; the ROIs it holds (none, and no
    file, where the labels hold no ROI)."""
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError:
        raise InputError("--dicom-seg needs highdicom: pip install 'tipsprog[dicom-seg]'") from None
    sources, frames = _source_slices(labels, folder, series_uid)
    present = [(roi, label) for roi, label in ROI_LABELS.items() if (frames == label).any()]
    if not present:
        return []  # a SEG holds at least one segment
    algorithm = hd.AlgorithmIdentificationSequence(
        name="tipsprog", version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=roi,
            segmented_property_category=codes.SCT.Organ if roi != "portal_vein" else codes.SCT.AnatomicalStructure,
            segmented_property_type=getattr(codes.SCT, ROI_CODES[roi]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, (roi, _) in enumerate(present, start=1)
    ]
    try:
        segmentation = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=np.stack([frames == label for _, label in present], axis=-1),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="tipsprog",
            manufacturer_model_name="tipsprog segment",
            software_versions=__version__,
            device_serial_number="0",
            omit_empty_frames=False,
        )
    except ValueError as err:  # highdicom's checks of the source series (attributes the SEG IOD requires)
        raise InputError(f"{folder}: cannot write a DICOM SEG referencing this series ({err})") from None
    segmentation.save_as(path)
    return [roi for roi, _ in present]
