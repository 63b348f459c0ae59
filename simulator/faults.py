"""Content faults: sensor artifacts and malformed payloads.

Delivery faults (duplicate, out-of-order, late) are timing decisions and live in
model.py. Every function here takes its randomness as uniforms in [0, 1) so the
caller controls the random stream.
"""
from __future__ import annotations

from typing import Any

import orjson

# Artifact kinds, each tied to the field it corrupts.
_ARTIFACT_FIELDS = ("spo2", "heart_rate", "bp_systolic", "resp_rate", "temperature")


def apply_artifact(d: dict[str, Any], u: float, u2: float) -> bool:
    """Corrupt one present vital in place like a real sensor glitch; False if none present."""
    k0 = int(u * len(_ARTIFACT_FIELDS))
    for j in range(len(_ARTIFACT_FIELDS)):
        name = _ARTIFACT_FIELDS[(k0 + j) % len(_ARTIFACT_FIELDS)]
        if name not in d:
            continue
        if name == "spo2":  # probe slips: one dropout reading
            d[name] = 40 + int(u2 * 20)
        elif name == "heart_rate":  # double counting (T waves) or missed beats
            d[name] = min(d[name] * 2, 250) if u2 < 0.7 else max(d[name] // 2, 20)
        elif name == "bp_systolic":  # arterial line flush / cuff motion spike
            d[name] = min(d[name] + 60 + int(u2 * 40), 300)
        elif name == "resp_rate":  # impedance pneumography motion artifact
            d[name] = 0 if u2 < 0.5 else 45 + int(u2 * 10)
        else:  # probe off the skin
            d[name] = round(33.0 + u2, 1)
        return True
    return False


_WRONG_TYPE = {"vitals": ("heart_rate", "fast"), "labs": ("value", "high"), "medications": ("dose", "two tabs")}
# Not ISO-8601 UTC. (A bare epoch number is avoided: lenient parsers accept it.)
_BAD_TIMESTAMPS: tuple[str, ...] = ("2026-13-45T25:61:00Z", "yesterday", "", "26/11/2026 09:55", "2026-11-26T09:55:23")
N_MALFORMED_KINDS = 6


def malformed(kind: str, d: dict[str, Any], value: bytes, u: float, u2: float) -> bytes:
    """A payload that breaks the contract: bad JSON, missing id, wrong types or timestamps."""
    k = int(u * N_MALFORMED_KINDS)
    if k == 0:  # truncated in transit
        return value[: max(1, int(len(value) * (0.2 + 0.6 * u2)))]
    if k == 1:  # not UTF-8 at all
        return b"\xff\xfe" + value[2:]
    bad = dict(d)
    if k == 2:
        del bad["patient_id"]
    elif k == 3:
        field, text = _WRONG_TYPE[kind]
        bad[field] = text
    elif k == 4:
        bad["timestamp"] = _BAD_TIMESTAMPS[int(u2 * len(_BAD_TIMESTAMPS))]
    else:  # numeric id instead of "PT00042"
        bad["patient_id"] = int(str(bad["patient_id"])[2:])
    return orjson.dumps(bad)
