"""For benchmarks/gpu_window.sh: one line per e2e measurement of a bench.json (label codec fps steady
frames ok seconds)."""
import json
import sys

label, path = sys.argv[1], sys.argv[2]
with open(path) as f:
    doc = json.load(f)
for m in doc.get("measurements", doc.get("results", [])):
    if m.get("name") != "e2e":
        continue
    x = m.get("extra", {})
    print(f"{label} {m.get('codec')} fps={m.get('fps'):.1f} steady={x.get('steady_fps')} frames={m.get('frames')} "
          f"ok={x.get('frames_ok')} secs={m.get('seconds'):.2f} wall={x.get('wall_seconds')} "
          f"first={x.get('session_first_batch_s')} fin={x.get('session_finished_s')} err={m.get('error')}")
