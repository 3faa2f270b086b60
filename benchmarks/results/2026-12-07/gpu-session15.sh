#!/usr/bin/env bash
# GPU runs of this session (window 1). Phases: install | prep | tests | ab | live N
set -uo pipefail
export PYTHONUNBUFFERED=1
NEW=$PWD/.stage/new
export PYTHONPATH=/tmp/site:$NEW
phase=$1; shift
case $phase in
  install)
    bash .stage/recv.sh install && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/stage/track/*.whl && python3 -c "import trackers, supervision, scipy; print('tracking ok')"
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
  tests)
    nvidia-smi --query-gpu=name,driver_version --format=csv | tee $OUT/gpu.txt
    cat $NEW/COMMIT >> $OUT/gpu.txt
    cd $NEW && timeout ${T:-400} python3 -m pytest -m gpu -q -p no:cacheprovider ${TESTS:-} 2>&1 | tail -40 | tee $OUT/pytest_gpu.log
    ;;
  ab)  # files e2e: off / on (FLAG: --tracking or --cascade) alternating
    for i in $(seq 1 150); do [ -f /tmp/bench-clips/.ready ] && break; sleep 2; done
    [ -f /tmp/bench-clips/.ready ] || { echo "clips not ready"; tail -5 /tmp/prep.log; }
    for who in "$@"; do
      flag=""; [ "$who" = on ] && flag=${FLAG:---tracking}
      (cd $NEW && timeout 200 python3 -m benchmarks --codec h264 --sessions 14 --e2e-sessions 14 \
        --streams 2 --skip decode,source,engine,pyav_fp32,pyav_fp16,dali_legacy --job-seconds ${JOBS:-25} $flag \
        --clips /tmp/bench-clips --out /tmp/ab/$who-$RANDOM > /tmp/ab-last.log 2>&1)
      f=$(ls -t /tmp/ab/$who-*/bench.json 2>/dev/null | head -1)
      if [ -n "$f" ]; then python3 $NEW/../ab_extract.py ${FLAG:---tracking}-$who $f | tee -a $OUT/ab.txt; cp $f $OUT/bench-$who-$(date +%s).json
      else echo "$who FAILED" | tee -a $OUT/ab.txt; tail -30 /tmp/ab-last.log | tee -a $OUT/ab.txt; fi
    done
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
      cp /tmp/live-$who.log $OUT/live-$who-$n.log 2>/dev/null; cp /tmp/live-$who/live_sim.json $OUT/live-$who-$n.json 2>/dev/null
      ls /tmp/live-$who | head
    done
    ;;
esac
