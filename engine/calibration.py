"""Calibrated scores: a monotone map from a reranker's raw score (its logit) to P(relevant).

A calibration is fitted on labelled pairs (``crossrank calibrate``; the fitting lives in
``crossrank.evaluation.calibration``) and stored beside the artifact as ``calibration.json``. It is
not part of the manifest and never alters the ONNX files; it names the artifact it was fitted for
(the sha256 of its graph, ``Artifact.sha256``) and is refused by any other artifact. A
``Reranker`` built on a folder holding one returns calibrated scores (``raw_scores=True`` still
gives the logits); rankings are unchanged, since the map never reverses an order and rankings
are made on the raw scores.

Two maps (``METHODS``): "isotonic" (a non-decreasing step-free curve: linear between the fitted
points ``x`` (logits, increasing) -> ``y`` (probabilities), flat beyond them) and "platt" (a
logistic curve ``1 / (1 + exp(-(a * logit + b)))``, a > 0). File format::

    {"format": 1, "artifact_sha256": "<64 hex digits>", "method": "isotonic" | "platt",
     "parameters": {"x": [...], "y": [...]} | {"a": float, "b": float},
     "data": {"source": str, "sha256": "<of the labelled pairs>", "pairs": int, "positives": int, ...},
     "selection": {... the held-out figures that chose the method ...}, "created": "<ISO time>"}
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossrank.errors import ArtifactError, InvalidArgumentError, check_fields, is_one_of, is_type
from crossrank.locks import write_text_atomically

CALIBRATION_FILE = "calibration.json"
CALIBRATION_FORMAT = 1
METHODS = ("isotonic", "platt")


class CalibrationError(ArtifactError):
    """A calibration file is malformed or was fitted for another artifact; the message names the file."""


def _is_sha256(value) -> str | None:
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        return f"must be a sha256 (64 lower-case hex digits), got {value!r:.70}"
    return None


FIELDS = {"format": is_one_of(CALIBRATION_FORMAT), "artifact_sha256": _is_sha256, "method": is_one_of(*METHODS),
          "parameters": is_type(dict), "data": is_type(dict), "selection": is_type(dict), "created": is_type(str)}
REQUIRED = ("format", "artifact_sha256", "method", "parameters", "data")


def _finite_list(values, name: str) -> np.ndarray:
    if not isinstance(values, list) or not values or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise InvalidArgumentError(f"{name} must be a non-empty list of finite numbers")
    return np.asarray(values, dtype=np.float64)


def check_parameters(method: str, parameters: dict) -> dict:
    """The map's parameters, checked (InvalidArgumentError naming the problem): isotonic ``x``
    strictly increasing and ``y`` non-decreasing in [0, 1], of equal length; platt ``a`` > 0 and
    ``b`` finite."""
    if method == "platt":
        a, b = parameters.get("a"), parameters.get("b")
        for name, value in (("a", a), ("b", b)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidArgumentError(f"platt parameter {name} must be a finite number, got {value!r:.40}")
        if a <= 0:
            raise InvalidArgumentError(f"platt parameter a must be > 0 (a decreasing map would reverse rankings), "
                                       f"got {a}")
        return {"a": float(a), "b": float(b)}
    x, y = _finite_list(parameters.get("x"), "isotonic x"), _finite_list(parameters.get("y"), "isotonic y")
    if len(x) != len(y):
        raise InvalidArgumentError(f"isotonic x and y must have the same length, got {len(x)} and {len(y)}")
    if np.any(np.diff(x) <= 0):
        raise InvalidArgumentError("isotonic x must be strictly increasing")
    if np.any(np.diff(y) < 0) or y[0] < 0 or y[-1] > 1:
        raise InvalidArgumentError("isotonic y must be non-decreasing within [0, 1]")
    return {"x": x.tolist(), "y": y.tolist()}


@dataclass(frozen=True)
class Calibration:
    """A fitted map (see the module docstring); ``apply(logits)`` gives P(relevant), float32."""

    method: str
    parameters: dict
    artifact_sha256: str
    data: dict = field(default_factory=dict)       # what it was fitted on: source, sha256, pairs, positives
    selection: dict = field(default_factory=dict)  # held-out figures of each method that chose this one
    created: str = ""
    path: Path | None = field(default=None, compare=False)  # the file it was read from

    def __post_init__(self):
        if self.method not in METHODS:
            raise InvalidArgumentError(f"calibration method {self.method!r} is not one of {METHODS}")
        object.__setattr__(self, "parameters", check_parameters(self.method, self.parameters))

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """P(relevant) of each raw score (nan stays nan), float32."""
        z = np.asarray(logits, dtype=np.float64)
        p = self.parameters
        if self.method == "platt":
            out = 1.0 / (1.0 + np.exp(-(p["a"] * z + p["b"])))
        else:
            out = np.interp(z, p["x"], p["y"])
            out[np.isnan(z)] = np.nan
        return out.astype(np.float32)

    def summary(self) -> dict[str, Any]:
        """What /info and ``Reranker.describe()`` show: method, file, and what it was fitted on."""
        return {"method": self.method, "file": str(self.path) if self.path else None, "data": dict(self.data),
                "created": self.created}

    def to_json(self) -> dict[str, Any]:
        document = {"format": CALIBRATION_FORMAT, **asdict(self)}
        document.pop("path")
        return document

    def save(self, path: str | Path) -> Path:
        """Write the file atomically (written aside, then renamed over ``path``)."""
        path = Path(path)
        write_text_atomically(path, json.dumps(self.to_json(), indent=2) + "\n")
        return path


def read_calibration(path: str | Path) -> Calibration:
    """A calibration file, checked (CalibrationError naming the file and the problem)."""
    path = Path(path)
    where = repr(str(path))
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalibrationError(f"calibration file {where} does not exist (crossrank calibrate writes one)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CalibrationError(f"calibration file {where} is not readable JSON: {err}") from None
    check_fields(document, where, FIELDS, REQUIRED, CalibrationError)
    document.pop("format")
    try:
        return Calibration(**document, path=path)
    except InvalidArgumentError as err:
        raise CalibrationError(f"{where}: {err}") from None


def load_calibration(artifact, source: bool | str | Path = True) -> Calibration | None:
    """The calibration a reranker on ``artifact`` (an ``Artifact``) uses. source: True = the
    folder's ``calibration.json`` when there is one (else None); False = none; a path = that file
    (it must exist). A file fitted for another artifact is refused (CalibrationError)."""
    if source is False:
        return None
    if source is True:
        path = artifact.path / CALIBRATION_FILE
        if not path.is_file():
            return None
    elif isinstance(source, (str, Path)):
        path = Path(source)
    else:
        raise InvalidArgumentError(f"calibration must be True, False or a calibration.json path, got {source!r:.60}")
    calibration = read_calibration(path)
    if calibration.artifact_sha256 != artifact.sha256:
        raise CalibrationError(
            f"calibration file {str(path)!r} was fitted for another artifact (model.onnx sha256 "
            f"{calibration.artifact_sha256[:16]}...), not {str(artifact.path)!r} ({artifact.sha256[:16]}...): fit one "
            f"for this artifact with `crossrank calibrate {artifact.path}`, or pass calibration=False")
    return calibration


__all__ = ["CALIBRATION_FILE", "METHODS", "Calibration", "CalibrationError", "load_calibration", "read_calibration"]
