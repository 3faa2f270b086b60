"""streams.cascade_config: the ``kind`` of a secondary entry and the options of detectors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.cascade_config import DETECTOR_DEFAULTS, SecondaryConfig
from streams.config import parse_config
from streams.errors import ConfigError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cascades.md"


def _parse(entry: dict[str, Any]) -> SecondaryConfig:
    return parse_config({"sources": ["a.mp4"], "secondary": [entry]}).secondary[0]


@pytest.mark.parametrize(("entry", "key", "message"), [
    ({"kind": "segmenter"}, "secondary[0].kind", "expected one of"),
    ({"conf": 0.3}, "secondary[0].conf", "applies to detectors only"),
    ({"iou": 0.5}, "secondary[0].iou", "applies to detectors only"),
    ({"max_det": 5}, "secondary[0].max_det", "applies to detectors only"),
    ({"kind": "classifier", "max_det": 5}, "secondary[0].max_det", "applies to detectors only"),
    ({"kind": "detector", "conf": 1.5}, "secondary[0].conf", r"expected a number in \[0, 1\], got 1.5"),
    ({"kind": "detector", "iou": -0.1}, "secondary[0].iou", r"expected a number in \[0, 1\]"),
    ({"kind": "detector", "max_det": 0}, "secondary[0].max_det", "expected >= 1 boxes per crop"),
    ({"kind": "detector", "model": "builtin:pattern"}, "secondary[0].model", "bundled models are classifiers"),
])
def test_a_bad_kind_or_detector_option_names_its_key(entry: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        _parse({"name": "plates", "model": "plates.onnx", **entry})
    assert e.value.key == key


def test_detector_options_default_and_are_taken() -> None:
    plain = _parse({"name": "plates", "kind": "detector", "model": "plates.onnx"})
    assert plain.kind == "detector" and (plain.conf, plain.iou, plain.max_det) == (None, None, None)
    assert (plain.conf_threshold, plain.iou_threshold, plain.max_detections) == (
        DETECTOR_DEFAULTS["conf"], DETECTOR_DEFAULTS["iou"], DETECTOR_DEFAULTS["max_det"]) == (0.25, 0.45, 20)
    set_ = _parse({"name": "plates", "kind": "detector", "model": "plates.onnx", "conf": 0.5, "iou": 0.3,
                   "max_det": 3})
    assert (set_.conf_threshold, set_.iou_threshold, set_.max_detections) == (0.5, 0.3, 3)
    assert _parse({"name": "c", "model": "c.onnx"}).kind == "classifier"


def test_the_docs_detector_example_is_a_valid_config() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    examples = [yaml.safe_load(b) for b in blocks if "kind: detector" in b]
    assert len(examples) == 1
    cfg = parse_config({"sources": ["a.mp4"], **examples[0]})
    (plates,) = cfg.secondary
    assert (plates.kind, plates.classes, plates.conf_threshold, plates.max_detections) == (
        "detector", ["car", "truck"], 0.25, 20)
