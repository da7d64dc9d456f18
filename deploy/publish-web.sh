#!/usr/bin/env bash
# Publish the web client to its S3 bucket and refresh CloudFront (aws CLI v2).
#
#   deploy/publish-web.sh --stack babel [--server https://live.example.org] [DIR]
#   deploy/publish-web.sh --bucket NAME --distribution ID [--server URL] [DIR]
#
# DIR defaults to babel_actors/web. --stack reads the bucket, the distribution and the
# server's URL from the CloudFormation stack's outputs. --server (or the stack's
# ServerUrl) is written into config.js as window.BABEL_SERVER, since the pages are
# served from CloudFront and the API from the server's own host.
#
# Caching: file names carry no content hash, so browsers revalidate pages and config.js
# every time and keep other files for 5 minutes; CloudFront keeps everything until
# this script invalidates it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PAGE_CACHE="public, max-age=0, must-revalidate"
ASSET_CACHE="public, max-age=300"

usage() { sed -n '2,8s/^# \{0,1\}//p' "$0" >&2; exit 2; }

stack="" bucket="" distribution="" server="" dir=""
while (($#)); do
    case $1 in
        --stack) stack=${2:?}; shift 2 ;;
        --bucket) bucket=${2:?}; shift 2 ;;
        --distribution) distribution=${2:?}; shift 2 ;;
        --server) server=${2:?}; shift 2 ;;
        -h|--help) usage ;;
        -*) echo "publish-web.sh: unknown option $1" >&2; usage ;;
        *) [[ -z $dir ]] || usage; dir=$1; shift ;;
    esac
done
dir=${dir:-$ROOT/babel_actors/web}
[[ -f $dir/index.html ]] || { echo "publish-web.sh: no index.html in $dir" >&2; exit 1; }

output() {  # output KEY: one output of the stack
    aws cloudformation describe-stacks --stack-name "$stack" \
        --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue" --output text
}
if [[ -n $stack ]]; then
    bucket=${bucket:-$(output WebBucketName)}
    distribution=${distribution:-$(output WebDistributionId)}
    server=${server:-$(output ServerUrl)}
fi
[[ -n $bucket && -n $distribution ]] || usage
[[ -z $server || $server =~ ^https?://[A-Za-z0-9.:-]+$ ]] ||
    { echo "publish-web.sh: --server is an origin such as https://live.example.org" >&2; exit 1; }

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
cp -R "$dir/." "$staging/"
if [[ -z $server ]]; then
    echo "publish-web.sh: no --server: the pages will call their own origin" >&2
else
    cat >"$staging/config.js" <<EOF
// Written by deploy/publish-web.sh: the pages are on CloudFront, the server is here.
window.BABEL_SERVER = "$server";
EOF
fi

# Assets first, pages last, stale files removed at the end: a browser never gets a
# page that names a file not uploaded yet.
aws s3 sync "$staging" "s3://$bucket" --no-progress \
    --exclude "*.html" --exclude "config.js" --cache-control "$ASSET_CACHE"
aws s3 sync "$staging" "s3://$bucket" --no-progress \
    --exclude "*" --include "*.html" --include "config.js" --cache-control "$PAGE_CACHE"
aws s3 sync "$staging" "s3://$bucket" --no-progress --delete --size-only
aws cloudfront create-invalidation --distribution-id "$distribution" --paths "/*" \
    --query Invalidation.Id --output text
echo "published $dir to s3://$bucket (CloudFront $distribution)${server:+, server $server}"
