#!/usr/bin/env bash
# Installs what the test suite drives for real: Debian's chromium (Playwright's browser), dicom3tools'
# dciodvfy (validates de-identified DICOM), dcmtk's storescu (a real DICOM sender), OpenSSH's sftp and rclone
# (SFTP clients of the hub's SFTP server), Prometheus' promtool
# (checks and unit-tests the alerting rules in deploy/prometheus), Slurm (slurmctld, slurmd, scontrol) with
# munge for the GPU reservation tests (tests/support/slurm.py) and the Node.js OpenID Provider used by the
# OIDC tests; iproute2 and nftables for the workspaces' network namespaces, fuse3 for their data mount; HAProxy and the PostgreSQL 15
# server binaries for the multi-host cluster harness (tests/support/cluster.py, tests/test_cluster.py).
# Idempotent; fast when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
command -v dciodvfy >/dev/null 2>&1 || need_apt+=(dicom3tools)  # DICOM IOD validator (de-identification tests)
command -v storescu >/dev/null 2>&1 || need_apt+=(dcmtk)  # a real DICOM sender (storescu) for the destination tests
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v sftp >/dev/null 2>&1 || need_apt+=(openssh-client)  # the OpenSSH sftp client (tests/test_sftp.py)
command -v rclone >/dev/null 2>&1 || need_apt+=(rclone)  # rclone's sftp backend against the hub's SFTP server  # promtool checks and unit-tests deploy/prometheus rules
# a real Slurm for the compute tests (the packages' services are not started: the tests start their own daemons)
[ -x /usr/sbin/slurmctld ] || need_apt+=(slurmctld)
[ -x /usr/sbin/slurmd ] || need_apt+=(slurmd)
command -v scontrol >/dev/null 2>&1 || need_apt+=(slurm-client)
[ -x /usr/sbin/munged ] || need_apt+=(munge)
# network namespaces with nftables rules for the notebook workspaces' egress tests (test_workspaces)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v setpriv >/dev/null 2>&1 || need_apt+=(util-linux)
# FUSE (libfuse3 and fusermount3) for the workspaces' read-only data mount (strongroom.workspaces.fuse)
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
# the multi-host cluster harness: a load balancer and a PostgreSQL server of its own (initdb/pg_ctl)
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql-15)
if ((${#need_apt[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing system packages: ${need_apt[*]}"
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# /dev/fuse as udev leaves it on a Debian host (the rule KERNEL=="fuse", MODE="0666"): a workspace's data mount runs
# as the member's cluster account, not root. Containers without udev create the node 0600; the Slurm test needs it.
if [ -c /dev/fuse ] && [ "$(stat -c %a /dev/fuse)" != "666" ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO chmod 0666 /dev/fuse
fi

if [ ! -d tests/support/oidc/node_modules ]; then
  (cd tests/support/oidc && npm ci --no-audit --no-fund --loglevel=error)
fi
