#!/usr/bin/env bash
# Installs the peers the benchmarks compare against (not needed by the tests): Orthanc and its DICOMweb
# plugin (bench_wado.py, bench_receive.py, bench_deid.py), dcmtk's storescu (bench_receive.py) and wrk
# (bench_landing.py).
# Idempotent; fast when everything is present. The packages' own services are not started: each benchmark
# runs a throwaway Orthanc of its own on loopback.
set -euo pipefail

need_apt=()
[ -x /usr/sbin/Orthanc ] || command -v Orthanc >/dev/null 2>&1 || need_apt+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)
command -v storescu >/dev/null 2>&1 || need_apt+=(dcmtk)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)  # HTTP load tool (bench_landing.py)
if ((${#need_apt[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing system packages: ${need_apt[*]}"
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
