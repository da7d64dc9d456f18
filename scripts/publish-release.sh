#!/usr/bin/env bash
# Upload a release built by scripts/build-release.sh to the versioned prefix the
# stack's instances install from (ReleaseBucket, ReleaseVersion):
#
#   scripts/publish-release.sh --bucket my-releases dist/babel-actors-0.1.0+g1a2b3c4.tar.gz
#
# -> s3://my-releases/babel-actors/0.1.0+g1a2b3c4/babel-actors-0.1.0+g1a2b3c4.tar.gz
# (and its .sha256). A version already published is refused: a version names one
# build, forever.
set -euo pipefail

bucket=
while (($# > 1)); do
    case $1 in
        --bucket) bucket=$2; shift 2 ;;
        *) break ;;
    esac
done
tarball=${1:-}
[[ -n $bucket && -f $tarball && $tarball == *.tar.gz ]] || {
    echo "usage: $0 --bucket BUCKET dist/babel-actors-VERSION.tar.gz" >&2
    exit 2
}
file=$(basename "$tarball")
version=${file#babel-actors-}
version=${version%.tar.gz}
prefix=s3://$bucket/babel-actors/$version
if aws s3 ls "$prefix/$file" >/dev/null 2>&1; then
    echo "$prefix/$file exists already: build a new version" >&2
    exit 1
fi
aws s3 cp --only-show-errors "$tarball" "$prefix/$file"
aws s3 cp --only-show-errors "$tarball.sha256" "$prefix/$file.sha256"
echo "published: ReleaseBucket=$bucket ReleaseVersion=$version"
