#!/usr/bin/env bash
# Installs everything the daemon, its tests and its demo need on Debian 12 (run as root), then builds.
# Idempotent: packages already present are not reinstalled, and the build is redone each time.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(etcd-server etcd-client iproute2 iputils-ping iperf3 iptables nftables kmod containernetworking-plugins
  openssl procps curl python3 make g++ ca-certificates
  prometheus  # promtool and a real Prometheus server for the /metrics tests
  wireguard-tools wireguard-go  # wg(8); userspace WireGuard where the kernel has no wireguard module
  tcpdump  # the wireguard tests capture the underlay to show that pod packets never cross it in clear
  podman runc debootstrap)  # the container image (scripts/build-image.sh) and the tests that run it
# Debian starts these services when it installs their packages; the tests and the demo start their own.
SERVICES_OF_PACKAGES=(etcd-server:etcd prometheus:prometheus)

if [ "$(id -u)" != 0 ]; then
  echo "setup: run as root (it installs packages and the tests create network namespaces)" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  # A service installed just now is stopped and disabled, so that nothing keeps listening (etcd on
  # 127.0.0.1:2379, Prometheus on :9090) behind the user's back; one that was there before is left alone.
  for entry in "${SERVICES_OF_PACKAGES[@]}"; do
    pkg=${entry%%:*} service=${entry#*:}
    [[ " ${missing[*]} " == *" $pkg "* ]] || continue
    if [ -d /run/systemd/system ]; then
      systemctl disable --now "$service.service" >/dev/null 2>&1 || true
      echo "setup: stopped and disabled $service.service, which installing $pkg started (systemctl enable --now $service to use it)"
    elif [ -x "/etc/init.d/$service" ]; then
      # Without systemd, Debian starts the package's init script instead.
      "/etc/init.d/$service" stop >/dev/null 2>&1 || true
      update-rc.d "$service" disable >/dev/null 2>&1 || true
      echo "setup: stopped and disabled the $service init script, which installing $pkg started (update-rc.d $service enable to use it)"
    fi
  done
fi

# The Node.js versions package.json's engines allow (read from there, so the two never disagree).
if ! command -v node >/dev/null || ! node -e '
  const range = require("./package.json").engines.node;
  const v = process.versions.node.split(".").map(Number);
  const atLeast = (a) => { for (let i = 0; i < 3; i++) if (v[i] !== a[i]) return v[i] > a[i]; return true; };
  const ok = range.split("||").some((part) => {
    const m = /^(\^|>=)(\d+)(?:\.(\d+))?(?:\.(\d+))?$/.exec(part.trim());
    if (!m) return false;
    const min = [Number(m[2]), Number(m[3] ?? 0), Number(m[4] ?? 0)];
    return m[1] === ">=" ? atLeast(min) : v[0] === min[0] && atLeast(min);
  });
  process.exit(ok ? 0 : 1);'; then
  echo "setup: Node.js $(node -p 'require("./package.json").engines.node' 2>/dev/null || echo '^20.19.0 || ^22.12.0 || >=23') is required (found: $(node --version 2>/dev/null || echo none)); Debian 12's own nodejs (18) is too old: see the README" >&2
  exit 1
fi

# The native addon builds against the local Node headers (no download): point node-gyp at them.
if [ -f /usr/include/node/node.h ] && [ -z "${npm_config_nodedir:-}" ]; then
  export npm_config_nodedir=/usr
fi

# flanneld in iptables mode refuses to start without br_netfilter, as upstream does (traffic between pods
# on one bridge would bypass iptables); Docker loads it on its hosts, a fresh machine may not have it.
if [ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
  echo "setup: loading the br_netfilter kernel module"
  modprobe br_netfilter || echo "setup: cannot load br_netfilter; flanneld in iptables mode will not start" >&2
fi

# npm ci (which also builds the native addon) only when the lock file or the native sources changed
# since the last install here; a fresh clone always installs.
stamp=node_modules/.flanneld-ts-install
want=$(cat package-lock.json binding.gyp src/native/* | sha256sum | cut -d' ' -f1)
if [ ! -f build/Release/flannel_native.node ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  npm ci --no-audit --no-fund
  echo "$want" > "$stamp"
else
  echo "setup: node_modules and the native addon are up to date"
fi
npm run build
echo "setup: done ($(node --version), $(etcd --version | head -1))"
