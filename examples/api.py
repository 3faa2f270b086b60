"""The Python API: iterate a job's results. Run from the repository's root after `fovea demo`
(which renders fovea-demo/sample.mp4):

    python examples/api.py
"""

from __future__ import annotations

import sys
from collections import Counter

from pipelines import Pipeline


def main(source: str = "fovea-demo/sample.mp4") -> int:
    pipeline = Pipeline(model="default", device="auto", conf_threshold=0.3)
    per_label: Counter[str] = Counter()
    frames = 0
    for result in pipeline.run([source]):
        frames += 1
        per_label.update(result.detections.labels)
    print(f"{frames} frames, detections per label: {dict(sorted(per_label.items()))}")
    assert pipeline.summary is not None
    print(pipeline.summary.to_text())
    return 0 if pipeline.summary.ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
