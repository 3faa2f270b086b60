"""The top-level packages export their public names and import cheaply, without side effects."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["streams", "operators", "engines"])
def test_all_names_resolve(package: str) -> None:
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing
    assert sorted(module.__all__) == sorted(set(module.__all__))


def test_package_import_is_light() -> None:
    """``import streams, operators, engines`` loads no torch, PyAV, ONNX or DALI (lazy exports)."""
    code = (
        "import sys, streams, operators, engines; "
        "print(sorted({'torch', 'av', 'onnx', 'onnxruntime', 'nvidia.dali'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_lazy_export_is_the_module_attribute() -> None:
    import operators
    from operators.boxes import LetterboxGeometry, letterbox_geometry

    assert operators.letterbox_geometry is letterbox_geometry
    assert operators.LetterboxGeometry is LetterboxGeometry
    with pytest.raises(AttributeError):
        operators.no_such_name  # noqa: B018
