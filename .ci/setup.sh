#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu CPU machine for Fovea's tests: system packages for the
# real servers the tests start (GStreamer RTSP server, mosquitto, redis-server, postgresql),
# then torch (CPU build first, so the project does not pull CUDA wheels), then the project
# with its extras (dev brings the Kafka-protocol test broker).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
if command -v apt-get >/dev/null 2>&1; then
  pkgs=$(grep -v '^#' .ci/apt-packages-live.txt 2>/dev/null | xargs || true)
  if [ -n "$pkgs" ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
  fi
fi
python3 -m pip install -q --upgrade pip
python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q -e ".[dev,live,tracking,kafka,redis,postgres,ray]"
python3 -m pip install -q --no-deps "trackers==2.6.1"  # its opencv-python needs libGL: the extra brings the headless build
