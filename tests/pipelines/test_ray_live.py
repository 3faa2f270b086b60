"""``fovea live --ray``: cameras sharded over Ray workers behind one control API.

The end-to-end test runs the command as users run it (``--ray --ray-workers 2``: a local Ray
instance, two CPU workers) on clips paced as cameras, drives it over HTTP (an added camera
lands on the worker with the fewest, a removed one goes, the answers gather every worker's
streams), kills one worker's process and checks that its cameras run again on the other
worker, numbered in their next epoch (from 2**40: no ``(source, frame_index)`` repeats over
the workers' outputs, as the network sinks' idempotency keys need), and that a replacement
worker starts; every camera's records come out. Slow (about a minute on a 2-core CPU): Ray's
start and each worker's (torch, the model).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pipelines.cli import main
from tests.live.helpers import wait_until
from tests.media import write_clip
from tests.optional import require_module
from tests.servers.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
RAY_EXTRA_LINE = ("fovea: fovea live --ray needs the 'ray' extra (ray not installed): "
                  "pip install -e \".[ray]\"")


def _write_config(tmp_path: Path, model: Path, port: int, cameras: int = 3) -> Path:
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(cameras + 2):
        write_clip(clips / f"c{i}.mp4", "libx264", frames=20, width=160, height=120, fps=10)
    cfg = tmp_path / "live.yaml"
    cfg.write_text(json.dumps({
        "sources": [{"uri": f"file://{clips / f'c{i}.mp4'}", "id": f"cam{i}"} for i in range(cameras)],
        "model": {"path": str(model), "input_size": [128, 128]},
        "engine": {"device": "cpu", "batch_size": 8}, "tracker": {"type": "bytetrack"},
        "live": {"decode": "cpu", "log_interval_s": 0, "inference_threads": 1,
                 "http": {"port": port, "allow": {"file_dirs": [str(clips)]}}},
        "sinks": [{"type": "jsonl", "path": "out/detections.jsonl"}],
    }))
    return cfg


def _call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=40) as resp:
            text = resp.read().decode()
            code = resp.status
    except urllib.error.HTTPError as e:
        text, code = e.read().decode(), e.code
    except OSError:
        return 0, None
    return code, (json.loads(text) if text.startswith(("{", "[")) else text)


def _health(base: str) -> dict[str, Any]:
    code, answer = _call("GET", f"{base}/health")
    return answer if code in (200, 503) else {}


def _on(base: str) -> dict[str, list[str]]:
    """Worker index -> its streams, from /health."""
    return {w: info["streams"] for w, info in _health(base).get("workers", {}).items()}


def _states(base: str) -> dict[str, str]:
    return {sid: s["state"] for sid, s in _health(base).get("streams", {}).items()}


def _records(path: Path) -> dict[str, list[int]]:
    """Per camera, the frame indices of its records in a worker's output, in file order."""
    out: dict[str, list[int]] = defaultdict(list)
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines(keepends=True):
        if line.endswith("\n"):  # (a line being written is left for the next look)
            r = json.loads(line)
            out[r["source"]].append(r["frame_index"])
    return out


def _written(out: Path, worker: int, cameras: set[str]) -> bool:
    return cameras <= set(_records(out / f"detections.w{worker}.jsonl"))


@pytest.mark.slow
def test_cameras_over_two_ray_workers_behind_one_api(bright_model: Path, tmp_path: Path) -> None:
    require_module("ray", "the ray extra")
    require_module("trackers", "the tracking extra: trackers")  # restarted cameras pass a tracker too
    port = free_port()
    cfg = _write_config(tmp_path, bright_model, port)
    clips = tmp_path / "clips"
    base = f"http://127.0.0.1:{port}"
    outputs = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "--log-level", "WARNING", "live", str(cfg),
                             "--ray", "--ray-workers", "2"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        live3 = {"cam0": "live", "cam1": "live", "cam2": "live"}
        assert wait_until(lambda: _states(base) == live3, 150, 0.5), _health(base)
        # the config's cameras, spread by count
        assert _on(base) == {"0": ["cam0", "cam2"], "1": ["cam1"]}
        assert wait_until(lambda: _written(outputs, 0, {"cam0", "cam2"}) and _written(outputs, 1, {"cam1"}), 60)
        health = _health(base)
        assert health["status"] == "ok" and {w["state"] for w in health["workers"].values()} == {"alive"}

        # added over HTTP: to the worker with the fewest streams
        code, answer = _call("POST", f"{base}/streams", {"id": "cam3", "uri": f"file://{clips / 'c3.mp4'}"})
        assert code == 201 and answer["id"] == "cam3", answer
        assert _on(base) == {"0": ["cam0", "cam2"], "1": ["cam1", "cam3"]}
        assert wait_until(lambda: _written(outputs, 1, {"cam3"}), 60)
        # the single-process API's rules: an id in use, a URI outside the allow-list, a bad body
        assert _call("POST", f"{base}/streams", {"id": "cam3", "uri": f"file://{clips / 'c4.mp4'}"})[0] == 409
        code, answer = _call("POST", f"{base}/streams", {"id": "x", "uri": f"file://{tmp_path / 'live.yaml'}"})
        assert code == 403 and answer["key"] == "uri", answer
        code, answer = _call("POST", f"{base}/streams", {"id": "x", "uri": "rtsp://h/a", "fps": 5})
        assert code == 400 and answer["key"] == "fps", answer

        # removed: from the worker that has it; its id is not reused in this job
        assert _call("DELETE", f"{base}/streams/cam0") == (200, {"removed": "cam0"})
        assert _call("DELETE", f"{base}/streams/cam0")[0] == 404
        code, answer = _call("POST", f"{base}/streams", {"id": "cam0", "uri": f"file://{clips / 'c4.mp4'}"})
        assert code == 409 and "removed earlier" in answer["error"], answer
        assert _on(base) == {"0": ["cam2"], "1": ["cam1", "cam3"]}

        # the answers gather every worker's streams, each with its own state
        assert wait_until(lambda: _states(base) == {"cam1": "live", "cam2": "live", "cam3": "live"}, 30, 0.5)
        code, answer = _call("GET", f"{base}/streams")
        assert code == 200 and [s["id"] for s in answer["streams"]] == ["cam1", "cam2", "cam3"]
        assert _call("GET", f"{base}/streams/cam3")[1]["state"] == "live"
        code, metrics = _call("GET", f"{base}/metrics")
        assert code == 200 and 'fovea_ray_worker_up{ray_worker="1"} 1.0' in metrics
        assert 'ray_worker="0"' in metrics and 'stream="cam3"' in metrics

        # worker 1 killed: its cameras run again on worker 0, a replacement worker starts
        os.kill(_health(base)["workers"]["1"]["pid"], signal.SIGKILL)
        assert wait_until(lambda: _health(base).get("workers", {}).get("1", {}).get("state") == "dead", 30, 0.2)
        assert wait_until(lambda: _on(base).get("0") == ["cam1", "cam2", "cam3"], 30, 0.2), _health(base)
        assert wait_until(lambda: _states(base) == {"cam1": "live", "cam2": "live", "cam3": "live"}, 30, 0.5)
        assert wait_until(lambda: _written(outputs, 0, {"cam1", "cam3"}), 60)
        assert wait_until(lambda: _health(base).get("workers", {}).get("2", {}).get("state") == "alive", 90, 0.5)
        health = _health(base)
        assert health["status"] == "ok" and health["workers"]["2"]["streams"] == [], health
        assert "fovea_ray_camera_restarts_total 2.0" in _call("GET", f"{base}/metrics")[1]
        code, answer = _call("POST", f"{base}/streams", {"id": "cam4", "uri": f"file://{clips / 'c4.mp4'}"})
        assert code == 201 and _on(base)["2"] == ["cam4"]
        assert wait_until(lambda: _written(outputs, 2, {"cam4"}), 60)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    summary = out[out.index("live: "):]  # (Ray's own note of the killed worker may come first)
    assert summary.startswith("live: 5 streams"), out
    assert "cam0: " in summary and "state removed" in summary and "cam4: " in summary
    assert sorted(p.name for p in outputs.glob("*.jsonl")) == ["detections.w0.jsonl", "detections.w1.jsonl",
                                                               "detections.w2.jsonl"]
    w0, w1, w2 = (_records(outputs / f"detections.w{i}.jsonl") for i in range(3))
    assert set(w0) == {"cam0", "cam1", "cam2", "cam3"} and set(w1) == {"cam1", "cam3"} and set(w2) == {"cam4"}
    for per_camera in (w0, w1, w2):
        for sid, indices in per_camera.items():
            assert indices == sorted(set(indices)), sid  # in order, none twice, per worker's output
    # restarted on worker 0 in their second epoch (from 2**40), whatever worker 1 had read
    for sid in ("cam1", "cam3"):
        assert max(w1[sid]) < 2**40 <= w0[sid][0] < 2**40 + 10, (sid, w1[sid][-3:], w0[sid][:3])
    assert max(w0["cam0"] + w0["cam2"] + w2["cam4"]) < 2**40  # never moved: their first epoch
    keys = [(sid, i) for out in (w0, w1, w2) for sid, indices in out.items() for i in indices]
    assert len(keys) == len(set(keys))  # the job's (source, frame_index): each once over all outputs


def test_ray_live_options_are_refused_before_any_work(bright_model: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    require_module("ray", "the ray extra")
    import ray

    cfg = _write_config(tmp_path, bright_model, free_port(), cameras=1)
    assert main(["live", str(cfg), "--ray-workers", "2"]) == 2
    assert "--ray-workers: a number >= 1, with --ray" in capsys.readouterr().err
    assert main(["live", str(cfg), "--ray", "--ray-workers", "0"]) == 2
    assert main(["live", str(cfg), "--ray", "--device", "cuda:1"]) == 2
    assert "engine.device: cuda:1: with --ray Ray gives each worker one GPU" in capsys.readouterr().err
    text = cfg.read_text()
    cfg.write_text(text.replace('"path": "out/detections.jsonl"', '"path": "/dev/stdout"'))
    assert main(["live", str(cfg), "--ray"]) == 2
    assert "sinks[0].path: /dev/stdout: with --ray each worker writes outputs of its own" in capsys.readouterr().err
    cfg.write_text(text.replace('"id": "cam0"}]', '"id": "cam0"}, {"uri": "file:///x.mp4", "id": "cam0"}]'))
    assert main(["live", str(cfg), "--ray"]) == 2
    assert "sources[1].id: the stream id 'cam0' is given twice" in capsys.readouterr().err
    assert not ray.is_initialized()  # refused before Ray was started


def test_without_the_ray_extra_one_line_names_it(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['ray'] = None\n"
            "from pipelines.cli import main\n"
            "sys.exit(main(['live', '--source', 'rtsp://127.0.0.1/x', '--ray']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [RAY_EXTRA_LINE]


def test_each_worker_writes_outputs_of_its_own(tmp_path: Path) -> None:
    from pipelines.ray_live import worker_config, worker_path
    from streams.config import parse_config
    from streams.live.types import StreamSpec

    assert worker_path("out/detections.jsonl", 0) == "out/detections.w0.jsonl"
    assert worker_path("/data/fovea-out/spool", 3) == "/data/fovea-out/spool.w3"
    cfg = parse_config({"sources": ["rtsp://127.0.0.1/a"],
                        "sinks": [{"type": "jsonl", "path": str(tmp_path / "d.jsonl")},
                                  {"type": "csv", "path": str(tmp_path / "d.csv")}]})
    spec = StreamSpec("gate", "rtsp://127.0.0.1/b", username="u", password="secret-pw")
    mine = worker_config(cfg, 1, [spec])
    assert [s.config.path for s in mine.sinks] == [str(tmp_path / "d.w1.jsonl"), str(tmp_path / "d.w1.csv")]
    assert [(s.uri, s.id, s.username, s.password) for s in mine.sources] == [
        ("rtsp://127.0.0.1/b", "gate", "u", "secret-pw")]
    assert [s.config.path for s in cfg.sinks] == [str(tmp_path / "d.jsonl"), str(tmp_path / "d.csv")]



class _RayActorError(Exception):
    pass


class _Method:
    def __init__(self, fn: Any) -> None:
        self.remote = fn


class _FakeActor:
    """A worker as the front calls it: ``add_stream`` answers, or fails as a dead actor's does."""

    def __init__(self, dead: bool = False) -> None:
        self.dead = dead
        self.firsts: list[int] = []  # the first frame index of each add_stream it was sent
        self.add_stream = _Method(self._add)
        self.ready = _Method(lambda timeout: None)

    def _add(self, spec: Any, first_frame_index: int = 0) -> Any:
        from streams.live.types import StreamState, StreamStats

        self.firsts.append(first_frame_index)
        if self.dead:
            return _RayActorError("the actor died")
        return StreamStats(spec.id, spec.uri, "tcp", "frames", StreamState.CONNECTING, 0.0)


class _FakeRay:
    """What :class:`pipelines.ray_live.RayLive` asks of ``ray`` to add cameras and to replace a
    dead worker (an object ref is the answer itself here)."""

    exceptions = SimpleNamespace(RayActorError=_RayActorError, GetTimeoutError=TimeoutError)

    def __init__(self) -> None:
        self.started: list[_FakeActor] = []  # replacement workers

    def get(self, ref: Any, timeout: float | None = None) -> Any:
        if isinstance(ref, Exception):
            raise ref
        return ref

    def kill(self, actor: _FakeActor) -> None:
        actor.dead = True

    def remote(self, cls: Any) -> Any:  # ray.remote(LiveWorker).options(...).remote(...)
        def start(*args: Any) -> _FakeActor:
            self.started.append(_FakeActor())
            return self.started[-1]

        return SimpleNamespace(options=lambda **kwargs: SimpleNamespace(remote=start))


def test_every_add_of_a_camera_takes_a_new_epoch_even_one_that_met_a_dying_worker() -> None:
    """The guarantee does not rest on what the front knows: a worker that dies during the add
    may have read frames already, so the retry on the next worker is numbered in the next
    epoch; a restart after a death takes the one after."""
    from pipelines.ray_live import RayLive, _Worker
    from streams.config import parse_config
    from streams.live.config import parse_live_config
    from streams.live.types import StreamSpec

    ray = _FakeRay()
    cfg = parse_config({"sources": ["rtsp://127.0.0.1/a"], "sinks": [{"type": "jsonl", "path": "out/d.jsonl"}]})
    front = RayLive(ray, cfg, parse_live_config(None), {"num_cpus": 1})
    dying, taker = _FakeActor(dead=True), _FakeActor()
    front.workers = [_Worker(0, dying, state="alive"), _Worker(1, taker, state="alive")]
    front.wanted = 2
    front.add_stream(StreamSpec("cam", "rtsp://127.0.0.1/cam"))
    assert dying.firsts == [0] and taker.firsts == [2**40] and front.owner == {"cam": 1}
    assert front.workers[0].state == "dead" and len(ray.started) == 1  # its replacement
    front.workers[2].state = "alive"
    front._died(front.workers[1], "killed")  # cam restarts on the replacement
    assert ray.started[0].firsts == [2 * 2**40] and front.owner == {"cam": 2}
