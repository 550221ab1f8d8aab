#!/usr/bin/env bash
# Builds the real control plane the end-to-end suite runs, from the Go module proxy, into bin/:
#   bin/etcd, bin/helm (Helm 3), bin/helm4 (Helm 4), and for each Kubernetes version V
#   bin/k8s/V/{kube-apiserver,kube-controller-manager,agnhost}.
# `K8S_VERSION=V bash tools/build.sh` builds only that Kubernetes version (and the rest).
#
# Pins live in tools/versions.env and the go.mod/go.sum of tools/{k8s/v1.MINOR,etcd,helm,helm4}.
# Each binary is stamped with a hash of its own inputs: an unchanged pin set rebuilds nothing. A
# binary that KUBEBUILDER_ASSETS already provides (controller-runtime's envtest convention) is not
# built; the harness uses it.
set -euo pipefail
tools=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$tools")
bin="${TOOLS_BIN:-$root/bin}"
source "$tools/versions.env"
versions=${K8S_VERSION:-$K8S_VERSIONS}
mkdir -p "$bin"
goversion=$(go env GOVERSION)

# Same rule as the harness (tests/e2e/controlplane.py: binary_dir): etcd and kube-apiserver come
# from KUBEBUILDER_ASSETS only as a pair; any other binary whenever the folder holds it.
provided() {
  [ -n "${KUBEBUILDER_ASSETS:-}" ] || return 1
  case $1 in
    etcd | kube-apiserver) [ -f "$KUBEBUILDER_ASSETS/etcd" ] && [ -f "$KUBEBUILDER_ASSETS/kube-apiserver" ] ;;
    *) [ -f "$KUBEBUILDER_ASSETS/$1" ] ;;
  esac
}

build() {  # build OUT DIR PACKAGE [LDFLAGS]: OUT relative to bin/, DIR relative to tools/
  local out=$1 dir=$2 package=$3 ldflags=${4:-}
  local name target stamp
  name=$(basename "$out") target="$bin/$out"
  if provided "$name"; then
    echo "tools: $name from KUBEBUILDER_ASSETS ($KUBEBUILDER_ASSETS/$name)"
    return
  fi
  # the stamp covers the module's pins, this script, the flags and the Go toolchain that builds
  stamp=$( (cd "$tools/$dir" && cat go.mod go.sum $(compgen -G '*.go' || true) "$tools/build.sh" \
    && echo "$package $ldflags $goversion") | sha256sum | cut -d' ' -f1)
  if [ -x "$target" ] && [ "$(cat "$target.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "tools: $out is current ($target)"
    return
  fi
  echo "tools: building $out ($package) ..."
  local start=$SECONDS
  mkdir -p "$(dirname "$target")"
  (cd "$tools/$dir" && CGO_ENABLED=0 go build -p 2 -trimpath -ldflags "-s -w $ldflags" \
    -o "$target" "$package")
  echo "$stamp" > "$target.stamp"
  echo "tools: built $out in $((SECONDS - start))s ($target)"
}

build etcd etcd . "-X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION"

newest_minor=$(echo "${K8S_VERSIONS%% *}" | cut -d. -f2)
for version in $versions; do
  minor=$(echo "$version" | cut -d. -f2)
  dir="k8s/$(echo "$version" | cut -d. -f1-2)"
  [ -f "$tools/$dir/go.mod" ] || { echo "tools: no $tools/$dir/go.mod: run 'bash tools/k8s/gen-gomod.sh $version'"; exit 1; }
  grep -q "require k8s.io/kubernetes $version\$" "$tools/$dir/go.mod" \
    || { echo "tools: $tools/$dir/go.mod is not for $version: run 'bash tools/k8s/gen-gomod.sh $version'"; exit 1; }
  ldflags="-X k8s.io/component-base/version.gitVersion=$version \
-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
  for cmd in cmd/kube-apiserver cmd/kube-controller-manager test/images/agnhost; do
    build "k8s/$version/$(basename $cmd)" "$dir" "k8s.io/kubernetes/$cmd" "$ldflags"
  done
done

# Helm 3's default .Capabilities.KubeVersion (used by `helm template`) and the version `helm lint`
# checks deprecated APIs against are set by ldflags (helm's Makefile sets both; without the lint
# pair, lint only knows removals up to v1.20 and passes e.g. policy/v1beta1): the newest pinned
# Kubernetes. Helm 4 derives both from its own client-go.
h3=helm.sh/helm/v3
build helm helm $h3/cmd/helm "-X $h3/internal/version.version=$HELM_VERSION \
-X $h3/pkg/chartutil.k8sVersionMajor=1 -X $h3/pkg/chartutil.k8sVersionMinor=$newest_minor \
-X $h3/pkg/lint/rules.k8sVersionMajor=1 -X $h3/pkg/lint/rules.k8sVersionMinor=$newest_minor"
build helm4 helm4 helm.sh/helm/v4/cmd/helm \
  "-X helm.sh/helm/v4/internal/version.version=$HELM4_VERSION -X helm.sh/helm/v4/internal/version.metadata="
