#!/usr/bin/env bash
# Installs the independent clients the tests drive tern with (Debian packages).
# - coturn: for turnutils_uclient only; its turnserver service must not run.
# - chromium: headless browser for tests/browser.rs (WebRTC through tern); never downloaded at
#   test time.
# - clang, libbpf-dev: build crates/tern-xdp's XDP program (clang -target bpf, <bpf/bpf_helpers.h>);
#   iproute2 and ethtool: its tests' network namespaces and veth settings.
# - curl, git: tests/readme.rs runs the README's commands as written on a fresh clone.
# - nftables: tests/nat.rs puts clients behind NATs (masquerading) in network namespaces.
set -euo pipefail

# package:command it provides. The command is what the tests need; checking it (rather than
# dpkg's records, which still list a removed package's config files) tells what is really there.
packages=(coturn:turnutils_uclient chromium:chromium curl:curl git:git
  clang:clang libbpf-dev:/usr/include/bpf/bpf_helpers.h iproute2:ip ethtool:ethtool
  nftables:nft)
missing=()
for entry in "${packages[@]}"; do
  # A command name, or the path of a file the package installs (headers).
  what="${entry#*:}"
  if [[ "$what" == /* ]]; then [ -e "$what" ]; else command -v "$what" >/dev/null 2>&1; fi ||
    missing+=("${entry%%:*}")
done

if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # Keep package scripts from starting services (coturn's turnserver) during install.
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  $sudo rm -f /usr/sbin/policy-rc.d
fi

# Whatever installed it, no coturn server may be running next to the tests.
if pgrep -x turnserver >/dev/null 2>&1; then
  pkill -x turnserver || true
fi
command -v turnutils_uclient >/dev/null
command -v chromium >/dev/null
command -v clang >/dev/null
test -e /usr/include/bpf/bpf_helpers.h
command -v nft >/dev/null
