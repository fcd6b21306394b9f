#!/bin/sh
# The flannel CNI plugin's files, and how they reach a host: the one place that decides what the
# plugin is. deploy/install.sh --cni and the Kubernetes init container install-cni-plugin both ask here.
#
#   install-cni-plugin.sh --exec
#       prints the plugin's executable, relative to the tree (what /opt/cni/bin/flannel points at)
#   install-cni-plugin.sh --copy DIR [--host-path PATH]
#       copies the plugin (its files below, and the node binary that runs it) to DIR/flanneld-ts and
#       links DIR/bin/flannel to it. DIR is the host's CNI directory as this process sees it (the init
#       container mounts the host's /opt/cni at /host/opt/cni); PATH is that directory as the host sees
#       it (default /opt/cni), for the link. The new copy replaces the old one whole.
set -eu

tree=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)

# The executable the runtime runs, and every file it needs, relative to the installed tree. Where the
# client is compiled (build/Release/flannel_cni), it is the plugin: flanneld serves the request, and when
# it cannot the client runs bin/flannel --standalone, found through the client's own path — so the plugin
# is a link to the client, never a copy (docs/cni.md). bin/flannel runs dist/flannel-cni.mjs (the plugin
# bundled into one file, ipaddr.js included) with the node next to the tree; package.json makes dist/
# ES modules.
PLUGIN_EXEC=bin/flannel
PLUGIN_FILES="bin/flannel dist/flannel-cni.mjs package.json"
if [ -x "$tree/build/Release/flannel_cni" ]; then
  PLUGIN_EXEC=build/Release/flannel_cni
  PLUGIN_FILES="$PLUGIN_FILES $PLUGIN_EXEC"
fi

case ${1:-} in
  --exec)
    echo "$PLUGIN_EXEC"
    ;;
  --copy)
    [ $# -ge 2 ] || { echo "install-cni-plugin.sh: --copy needs the target directory" >&2; exit 2; }
    dir=$2
    host_path=/opt/cni
    if [ "${3:-}" = --host-path ] && [ -n "${4:-}" ]; then host_path=$4; elif [ $# -gt 2 ]; then
      echo "install-cni-plugin.sh: unexpected ${3}" >&2; exit 2
    fi
    node=$(command -v node) || { echo "install-cni-plugin.sh: no node on PATH to copy" >&2; exit 1; }
    new="$dir/flanneld-ts.new"
    rm -rf "$new"
    mkdir -p "$new" "$dir/bin"
    for f in $PLUGIN_FILES; do
      mkdir -p "$new/$(dirname "$f")"
      cp -R "$tree/$f" "$new/$f"
    done
    cp "$node" "$new/node"
    rm -rf "$dir/flanneld-ts"
    mv "$new" "$dir/flanneld-ts"
    ln -sfn "$host_path/flanneld-ts/$PLUGIN_EXEC" "$dir/bin/flannel"
    echo "install-cni-plugin.sh: $dir/bin/flannel -> $host_path/flanneld-ts/$PLUGIN_EXEC"
    ;;
  *)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
