"""Feature math shared by the live agents, the Kafka replay and the API (no Faust/Kafka imports).

The registry is the single definition of the feature vector; see docs/features.md.
"""
from tables.features.registry import (
    FEATURE_INDEX,
    FEATURE_NAMES,
    FEATURE_VERSION,
    FEATURES,
    N_FEATURES,
    FeatureSpec,
    features_as_dict,
)

__all__ = [
    "FEATURES",
    "FEATURE_INDEX",
    "FEATURE_NAMES",
    "FEATURE_VERSION",
    "N_FEATURES",
    "FeatureSpec",
    "features_as_dict",
]
