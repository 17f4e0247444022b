#!/usr/bin/env bash
# Installs what syncwall needs on a Debian machine: apt packages, a virtual environment, pinned Python packages.
# Idempotent and quiet when nothing is missing; re-installs Python packages when requirements.lock changes.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

if [ "$(id -u)" -ne 0 ]; then
  echo "syncwall: run as root (it builds network namespaces and firewall rules)" >&2
  exit 1
fi

missing_of() {  # sets `missing` to those of the named Debian packages that are not installed
  missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
}

apt_pkgs=(iptables iproute2 libnetfilter-queue-dev gcc make python3-dev python3-venv tmux curl iperf3 tcpdump tshark)
missing_of "${apt_pkgs[@]}"
if [ ${#missing[@]} -gt 0 ]; then
  echo "syncwall: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# The peer cluster of `syncwall bench peers`. Their Debian packages start their daemons on
# install (in the host's namespace, on the host's conntrack table): a policy-rc.d that refuses
# every start keeps them stopped; ours only if the machine has none of its own, removed after.
peer_pkgs=(keepalived conntrackd conntrack)
missing_of "${peer_pkgs[@]}"
if [ ${#missing[@]} -gt 0 ]; then
  echo "syncwall: installing Debian packages for the peer cluster (not started): ${missing[*]}" >&2
  guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    guard=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\n# syncwall bootstrap: no service starts while its packages install\nexit 101\n' > "$guard"
    chmod 755 "$guard"
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2 || true
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 || { [ -z "$guard" ] || rm -f "$guard"; exit 1; }
  [ -z "$guard" ] || rm -f "$guard"
fi

py=${SYNCWALL_PYTHON:-python3}
stamp=.venv/.syncwall-stamp
want=$( (cat requirements.lock pyproject.toml; "$py" --version) | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "syncwall: preparing the virtual environment in .venv" >&2
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -r requirements.lock >&2
  .venv/bin/python -m pip install -q --no-deps -e . >&2
  echo "$want" > "$stamp"
fi
