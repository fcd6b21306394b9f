#!/bin/sh
# mk-docker-opts.sh for flanneld-ts: takes the flags of upstream flannel's script of this name and
# writes the same Docker env file, through `flannelctl docker-opts`. Installed as
# /usr/libexec/flannel/mk-docker-opts.sh, where distribution units (ExecStartPost=) look for it.
set -eu

usage() {
	cat >&2 <<USAGE
$0 [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]

Writes Docker daemon options (--bip, --mtu, --ip-masq) for flannel's subnet into a Docker env file.
OPTIONS:
	-f	flannel subnet env file to read (default /run/flannel/subnet.env)
	-d	Docker env file to write (default /run/docker_opts.env)
	-i	write each option as its own DOCKER_OPT_* variable
	-c	write all options in one variable, DOCKER_OPTS (neither -i nor -c: both)
	-k	name of that one variable (default DOCKER_OPTS)
	-m	leave --ip-masq out (for Dockers without that option)
USAGE
	exit 1
}

args=""
while getopts "f:d:icmk:?h" opt; do
	case $opt in
	f) flannel_env=$OPTARG ;;
	d) docker_env=$OPTARG ;;
	i) args="$args --individual" ;;
	c) args="$args --combined" ;;
	m) args="$args --skip-ip-masq" ;;
	k) combined_key=$OPTARG ;;
	*) usage ;;
	esac
done

if [ -n "${FLANNELCTL:-}" ]; then
	ctl=$FLANNELCTL
elif [ -x "$(dirname "$(readlink -f "$0")")/../bin/flannelctl" ]; then
	ctl="$(dirname "$(readlink -f "$0")")/../bin/flannelctl"
else
	ctl=flannelctl
fi

# $args holds only fixed words; the file names and the key are passed as single arguments.
# shellcheck disable=SC2086
exec "$ctl" docker-opts $args \
	--subnet-file "${flannel_env:-/run/flannel/subnet.env}" \
	--docker-env-file "${docker_env:-/run/docker_opts.env}" \
	--combined-key "${combined_key:-DOCKER_OPTS}"
