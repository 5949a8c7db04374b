"""Proxy FID (DESIGN.md §3): feature extractors, streaming Fréchet distance, reference statistics.

Knows no models, sampling, scoring or search: images in, numbers out. Importing this package
registers the demo extractor `skipsearch-digits` with torch-fidelity, so
`torch_fidelity.calculate_metrics(..., feature_extractor="skipsearch-digits")` works too.
"""

from ..errors import MetricError
from .bootstrap import FrechetToReference, basic_interval, bootstrap_counts, fid_infinity, paired_gain
from .digits import EXTRACTOR_NAME as DIGITS_EXTRACTOR
from .dinov2 import EXTRACTOR_NAME as DINOV2_EDM2_EXTRACTOR
from .dinov2 import FeatureExtractorDinoV2EDM2
from .digits import FeatureExtractorDigits, load_classifier, weights_sha256
from .features import FEATURE_EXTRACTORS, INCEPTION, extract, feature_dim, inception_weights_path, make_extractor
from .fid import FeatureMoments, StreamingFID, as_statistics, fid_from_statistics
from .reference import (
    BUILTIN_REFERENCES,
    ReferenceStats,
    builtin_reference,
    builtin_reference_path,
    compute_reference,
    iter_image_batches,
    load_reference,
    load_references,
    resolve_reference,
    save_reference,
    statistics_sha256,
)

FEATURE_EXTRACTORS.register(DIGITS_EXTRACTOR, FeatureExtractorDigits)
FEATURE_EXTRACTORS.register(DINOV2_EDM2_EXTRACTOR, FeatureExtractorDinoV2EDM2)

__all__ = [
    "MetricError",
    "DIGITS_EXTRACTOR",
    "DINOV2_EDM2_EXTRACTOR",
    "FeatureExtractorDigits",
    "load_classifier",
    "weights_sha256",
    "FEATURE_EXTRACTORS",
    "INCEPTION",
    "make_extractor",
    "feature_dim",
    "extract",
    "inception_weights_path",
    "FeatureMoments",
    "StreamingFID",
    "fid_from_statistics",
    "as_statistics",
    "ReferenceStats",
    "statistics_sha256",
    "load_reference",
    "load_references",
    "save_reference",
    "resolve_reference",
    "compute_reference",
    "iter_image_batches",
    "builtin_reference",
    "builtin_reference_path",
    "BUILTIN_REFERENCES",
    "FrechetToReference",
    "bootstrap_counts",
    "basic_interval",
    "paired_gain",
    "fid_infinity",
]
