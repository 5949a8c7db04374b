"""Proxy FID (DESIGN.md §3): feature extractors, streaming Fréchet distance, reference statistics.

Importing this package registers the demo extractor `skipsearch-digits` with torch-fidelity, so
`torch_fidelity.calculate_metrics(..., feature_extractor="skipsearch-digits")` works too.
"""

from .digits_classifier import (
    EXTRACTOR_NAME as DIGITS_EXTRACTOR,
    FEATURE_DIM as DIGITS_FEATURE_DIM,
    DigitsClassifier,
    FeatureExtractorDigits,
    load_classifier,
    register,
    weights_sha256,
)
from .errors import MetricError
from .features import EXTRACTORS, extract, extractor_feature_dim, feature_dim, inception_weights_path, make_extractor
from .fid import FeatureMoments, StreamingFID, as_statistics, fid_from_statistics
from .reference import (
    BUILTIN_REFERENCES,
    ReferenceStats,
    builtin_reference,
    compute_builtin_reference,
    compute_reference,
    iter_image_batches,
    load_reference,
    real_data_floor,
    save_reference,
    statistics_sha256,
)

register()

__all__ = [
    "MetricError",
    "DIGITS_EXTRACTOR",
    "DIGITS_FEATURE_DIM",
    "DigitsClassifier",
    "FeatureExtractorDigits",
    "load_classifier",
    "register",
    "weights_sha256",
    "EXTRACTORS",
    "make_extractor",
    "feature_dim",
    "extractor_feature_dim",
    "extract",
    "inception_weights_path",
    "FeatureMoments",
    "StreamingFID",
    "fid_from_statistics",
    "as_statistics",
    "ReferenceStats",
    "statistics_sha256",
    "load_reference",
    "save_reference",
    "compute_reference",
    "iter_image_batches",
    "builtin_reference",
    "compute_builtin_reference",
    "real_data_floor",
    "BUILTIN_REFERENCES",
]
