#!/usr/bin/env bash
# babel-actors-upgrade VERSION: fetch that release from where this one came from
# (RELEASE_URL in /etc/babel-actors/deploy.env: s3://BUCKET/babel-actors/V/... or
# https://...), unpack it beside the others, make it current and run its install.sh.
# The same command with the previous version rolls back (its directory is kept).
#
#   sudo babel-actors-upgrade 0.2.0
set -euo pipefail

ETC=/etc/babel-actors
RELEASES=/opt/babel-actors/releases
version=${1:?usage: babel-actors-upgrade VERSION}
[[ $version =~ ^[0-9A-Za-z][0-9A-Za-z._+-]*$ ]] || { echo "not a version: $version" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "run as root" >&2; exit 1; }

current=$(sed -n 's/^RELEASE_URL=//p' "$ETC/deploy.env")
region=$(sed -n 's/^AWS_REGION=//p' "$ETC/deploy.env")
[[ -z $region ]] || export AWS_DEFAULT_REGION=$region
[[ $current == */babel-actors-*.tar.gz ]] || { echo "no RELEASE_URL in $ETC/deploy.env" >&2; exit 1; }
base=$(dirname "$(dirname "$current")")
url=$base/$version/babel-actors-$version.tar.gz
dir=$RELEASES/babel-actors-$version

if [[ ! -x $dir/deploy/install.sh ]]; then
    tarball=$(mktemp)
    trap 'rm -f "$tarball"' EXIT
    if [[ $url == s3://* ]]; then
        aws s3 cp --only-show-errors "$url" "$tarball"
    else
        curl -fsSLo "$tarball" "$url"
    fi
    rm -rf "$dir.partial"
    install -d "$dir.partial"
    tar -xzf "$tarball" -C "$dir.partial" --strip-components=1
    mv "$dir.partial" "$dir"
fi
sed -i "s|^RELEASE_URL=.*|RELEASE_URL=$url|" "$ETC/deploy.env"
ln -sfn "$dir" /opt/babel-actors/src
exec "$dir/deploy/install.sh"
