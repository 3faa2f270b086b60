#!/usr/bin/env bash
# GPU runs of this session. Phases: tests | ab CODEC ORDER... | live LABEL...
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
NEW=$PWD/.stage/new; OLD=$PWD/.stage/old
phase=$1; shift
case $phase in
  prep)  # the bench's clips, generated in the background (setsid: outlives this call)
    cd $NEW && PYTHONPATH=/tmp/site:$NEW setsid nohup python3 -c "from benchmarks.clips import default_specs, ensure_clips; ensure_clips(default_specs('h264') + default_specs('hevc'), '/tmp/bench-clips'); open('/tmp/bench-clips/.ready', 'w').close()" > /tmp/prep.log 2>&1 < /dev/null &
    echo prep started
    ;;
  tests)
    nvidia-smi --query-gpu=name,driver_version --format=csv | tee $OUT/gpu.txt
    cat $NEW/COMMIT >> $OUT/gpu.txt
    cd $NEW && PYTHONPATH=/tmp/site:$NEW timeout 540 python3 -m pytest -m gpu -q -p no:cacheprovider --timeout 300 2>&1 | tail -60 | tee $OUT/pytest_gpu.log
    ;;
  ab)
    codec=$1; shift
    for i in $(seq 1 120); do [ -f /tmp/bench-clips/.ready ] && break; sleep 2; done
    [ -f /tmp/bench-clips/.ready ] || { echo "clips not ready"; tail -5 /tmp/prep.log; }
    for who in "$@"; do
      dir=$NEW; [ "$who" = old ] && dir=$OLD
      (cd $dir && PYTHONPATH=/tmp/site:$dir timeout 280 python3 -m benchmarks --codec $codec --sessions 14 --e2e-sessions 14 \
        --streams 2 --skip decode,source,engine,pyav_fp32,pyav_fp16,dali_legacy --job-seconds ${JOBS:-30} \
        --clips /tmp/bench-clips --out /tmp/ab/$who-$codec-$RANDOM > /tmp/ab-last.log 2>&1)
      f=$(ls -t /tmp/ab/$who-$codec-*/bench.json 2>/dev/null | head -1)
      if [ -n "$f" ]; then python3 $NEW/../ab_extract.py $who $f | tee -a $OUT/ab.txt; else echo "$who $codec FAILED" | tee -a $OUT/ab.txt; tail -30 /tmp/ab-last.log | tee -a $OUT/ab.txt; fi
    done
    ;;
  live)
    for who in "$@"; do
      dir=$NEW; [ "$who" = old ] && dir=$OLD
      flag=--inference-threads; [ "$who" = old ] && flag=--workers
      (cd $dir && PYTHONPATH=/tmp/site:$dir timeout 200 python3 -m benchmarks.live_sim --streams 100 --duration 40 --warmup 12 \
        $flag 4 --clips /tmp/fovea-live-clips --out /tmp/live-$who > /tmp/live-$who.log 2>&1)
      echo "== $who rc $?" | tee -a $OUT/live.txt
      grep -E "streams|held|p95|fps|drop" /tmp/live-$who.log | tail -12 | tee -a $OUT/live.txt
      cp /tmp/live-$who.log $OUT/live-$who.log 2>/dev/null
    done
    ;;
esac
