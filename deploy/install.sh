#!/bin/sh
# Installs a built flanneld-ts tree (npm ci && npm run build first) on this machine:
#   /usr/local/lib/flanneld-ts/           dist/, bin/, build/Release/ (addons, CNI client), node_modules/ (production), docs, deploy
#   /usr/local/bin/flanneld, flannelctl   symlinks into it
#   /usr/libexec/flannel/mk-docker-opts.sh  upstream's script name, for units that call it
#   /etc/systemd/system/flanneld.service  and /etc/default/flanneld (only if absent)
# Options:
#   --docker      also install the docker.service drop-in (Docker on the flannel subnet)
#   --cni         also install the CNI plugin as /opt/cni/bin/flannel (a link to the compiled client,
#                 or to bin/flannel where it was not compiled)
#   --no-systemd  no unit files, no systemctl (container images)
#   --uninstall   stop and disable flanneld, remove everything above except /etc/default/flanneld
#                 and /etc/flannel; leases and kernel state stay. Add --purge to remove those two
#                 too, after `flannelctl node cleanup` has removed what flanneld made on this node
#                 (devices, routes, iptables/nftables rules, env file, CNI files) and, with the etcd
#                 endpoints of /etc/default/flanneld, its lease
#   --dry-run     print what would be done, change nothing
# DESTDIR=/some/root installs under that root instead of / (and never runs systemctl).
set -eu

src=$(cd "$(dirname "$0")/.." && pwd)
destdir=${DESTDIR:-}
lib=/usr/local/lib/flanneld-ts
docker=no
cni=no
systemd=yes
dry=no
uninstall=no
purge=no

for arg in "$@"; do
  case $arg in
    --docker) docker=yes ;;
    --cni) cni=yes ;;
    --no-systemd) systemd=no ;;
    --dry-run) dry=yes ;;
    --uninstall) uninstall=yes ;;
    --purge) purge=yes ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

# Every change goes through here, so --dry-run prints exactly what a real run does.
act() {
  echo "+ $*"
  if [ "$dry" = no ]; then "$@"; fi
}

if [ "$purge" = yes ] && [ "$uninstall" = no ]; then
  echo "install.sh: --purge goes with --uninstall" >&2
  exit 2
fi

if [ "$uninstall" = yes ]; then
  # Only on the real root of a machine run by systemd: stop the daemon before its files go. Its lease
  # stays in etcd (it expires, or `flannelctl lease delete` removes it) and its kernel state stays.
  if [ -z "$destdir" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    if systemctl list-unit-files flanneld.service >/dev/null 2>&1; then act systemctl disable --now flanneld.service || true; fi
  fi
  # --purge on this machine's own root: flannelctl, still installed, removes flanneld's state on the
  # node, with the unit's settings (the etcd endpoints, TLS files, subnet file); --release-lease when
  # they name etcd endpoints.
  if [ "$purge" = yes ] && [ -z "$destdir" ]; then
    if [ -x "$lib/bin/flannelctl" ]; then
      # shellcheck disable=SC2016
      act sh -c 'set -a
        for f in /etc/sysconfig/flanneld /etc/default/flanneld /etc/flannel/credentials.env; do [ -r "$f" ] && . "$f"; done
        set +a
        release=; [ -n "${FLANNELD_ETCD_ENDPOINTS:-${FLANNEL_ETCD_ENDPOINTS:-}}" ] && release=--release-lease
        FLANNELD_ETCD_ENDPOINTS=${FLANNELD_ETCD_ENDPOINTS:-${FLANNEL_ETCD_ENDPOINTS:-}}
        FLANNELD_ETCD_PREFIX=${FLANNELD_ETCD_PREFIX:-${FLANNEL_ETCD_PREFIX:-}}
        exec "$0" node cleanup --subnet-file="${FLANNELD_SUBNET_FILE:-/run/flannel/subnet.env}" $release' "$lib/bin/flannelctl" \
        || echo "install.sh: flannelctl node cleanup failed (above); uninstalling anyway" >&2
    else
      echo "install.sh: $lib/bin/flannelctl is not installed: flanneld's state on this node was not cleaned up" >&2
    fi
  fi
  for f in /usr/local/bin/flanneld /usr/local/bin/flannelctl /usr/libexec/flannel/mk-docker-opts.sh /opt/cni/bin/flannel \
    /etc/systemd/system/flanneld.service /etc/systemd/system/docker.service.d/flannel.conf; do
    # Only what points into our tree or is our file: a flannel CNI plugin from elsewhere stays.
    if [ -L "$destdir$f" ]; then
      case $(readlink "$destdir$f") in "$lib"/*) act rm -f "$destdir$f" ;; esac
    elif [ -e "$destdir$f" ] && [ "${f#/etc/systemd/}" != "$f" ]; then
      act rm -f "$destdir$f"
    fi
  done
  if [ -d "$destdir/usr/libexec/flannel" ]; then act rmdir --ignore-fail-on-non-empty "$destdir/usr/libexec/flannel"; fi
  if [ -d "$destdir$lib" ]; then act rm -rf "$destdir$lib"; fi
  if [ "$purge" = yes ]; then
    act rm -f "$destdir/etc/default/flanneld"
    if [ -d "$destdir/etc/flannel" ]; then act rm -rf "$destdir/etc/flannel"; fi
  fi
  if [ -z "$destdir" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then act systemctl daemon-reload; fi
  if [ "$dry" = yes ]; then echo "install.sh: dry run, nothing changed"; else echo "install.sh: uninstalled${destdir:+ (under $destdir)}"; fi
  exit 0
fi

for required in dist/flanneld.mjs dist/ctl/main.js dist/cni/main.js bin/flanneld bin/flannelctl bin/flannel; do
  if [ ! -e "$src/$required" ]; then
    echo "install.sh: $src/$required is missing: build first (npm ci && npm run build)" >&2
    exit 1
  fi
done

root="$destdir$lib"
act mkdir -p "$root"
# A fresh copy each time, so files removed from the project do not linger.
act rm -rf "$root/dist" "$root/bin" "$root/build" "$root/node_modules" "$root/docs" "$root/deploy"
act cp -R "$src/dist" "$src/bin" "$src/docs" "$src/deploy" "$root/"
act cp "$src/package.json" "$root/package.json"
if [ -f "$src/package-lock.json" ]; then act cp "$src/package-lock.json" "$root/package-lock.json"; fi
if ls "$src"/build/Release/*.node >/dev/null 2>&1; then
  act mkdir -p "$root/build/Release"
  act cp "$src"/build/Release/*.node "$root/build/Release/"
fi
if [ -x "$src/build/Release/flannel_cni" ]; then
  act mkdir -p "$root/build/Release"
  act cp "$src/build/Release/flannel_cni" "$root/build/Release/flannel_cni"
fi
if [ -d "$src/node_modules" ]; then
  act cp -R "$src/node_modules" "$root/node_modules"
  # Test and build tools are not needed at run time; npm prune removes them without the network.
  if command -v npm >/dev/null 2>&1; then
    echo "+ (cd $root && npm prune --omit=dev --ignore-scripts)"
    if [ "$dry" = no ]; then (cd "$root" && npm prune --omit=dev --ignore-scripts --no-audit --no-fund >/dev/null); fi
  fi
fi

act mkdir -p "$destdir/usr/local/bin"
act ln -sfn "$lib/bin/flanneld" "$destdir/usr/local/bin/flanneld"
act ln -sfn "$lib/bin/flannelctl" "$destdir/usr/local/bin/flannelctl"
act mkdir -p "$destdir/usr/libexec/flannel"
act ln -sfn "$lib/deploy/mk-docker-opts.sh" "$destdir/usr/libexec/flannel/mk-docker-opts.sh"

if [ "$cni" = yes ]; then
  # The plugin's executable in the installed tree, as install-cni-plugin.sh names it.
  act mkdir -p "$destdir/opt/cni/bin"
  act ln -sfn "$lib/$("$src/deploy/install-cni-plugin.sh" --exec)" "$destdir/opt/cni/bin/flannel"
fi

if [ "$systemd" = yes ]; then
  act mkdir -p "$destdir/etc/systemd/system"
  act cp "$src/deploy/systemd/flanneld.service" "$destdir/etc/systemd/system/flanneld.service"
  if [ ! -e "$destdir/etc/default/flanneld" ]; then
    act mkdir -p "$destdir/etc/default"
    act cp "$src/deploy/systemd/flanneld.default" "$destdir/etc/default/flanneld"
  fi
  if [ "$docker" = yes ]; then
    act mkdir -p "$destdir/etc/systemd/system/docker.service.d"
    act cp "$src/deploy/systemd/docker.service.d/flannel.conf" "$destdir/etc/systemd/system/docker.service.d/flannel.conf"
  fi
  # Only on the real root of a machine run by systemd.
  if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
    act systemctl daemon-reload
    echo "installed; start with: systemctl enable --now flanneld"
  fi
fi
if [ "$dry" = yes ]; then
  echo "install.sh: dry run, nothing changed"
else
  echo "install.sh: done${destdir:+ (under $destdir)}"
fi
