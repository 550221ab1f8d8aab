#!/usr/bin/env bash
# Builds the real control plane the end-to-end suite runs, from the Go module proxy, into bin/:
# etcd, kube-apiserver, kube-controller-manager, agnhost (a reference webhook) and helm.
#
# Pins live in tools/versions.env and the go.mod/go.sum of tools/{k8s,etcd,helm}. bin/.stamp holds
# a hash of all of them: an unchanged pin set rebuilds nothing. A binary that KUBEBUILDER_ASSETS
# already provides (controller-runtime's envtest convention) is not built; the harness uses it.
set -euo pipefail
tools=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$tools")
bin="${TOOLS_BIN:-$root/bin}"
source "$tools/versions.env"
mkdir -p "$bin"

stamp=$(cd "$tools" && cat versions.env build.sh k8s/go.mod k8s/go.sum etcd/go.mod etcd/go.sum \
  etcd/main.go helm/go.mod helm/go.sum | sha256sum | cut -d' ' -f1)

provided() {
  [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/$1" ]
}

fresh() {
  [ -x "$bin/$1" ] && [ -f "$bin/.stamp.$1" ] && [ "$(cat "$bin/.stamp.$1")" = "$stamp" ]
}

build() {  # build NAME DIR PACKAGE [LDFLAGS]
  local name=$1 dir=$2 package=$3 ldflags=${4:-}
  if provided "$name"; then
    echo "tools: $name from KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
    return
  fi
  if fresh "$name"; then
    echo "tools: $name is current"
    return
  fi
  echo "tools: building $name ($package) ..."
  local start=$SECONDS
  (cd "$tools/$dir" && CGO_ENABLED=0 go build -p 2 -trimpath -ldflags "-s -w $ldflags" \
    -o "$bin/$name" "$package")
  echo "$stamp" > "$bin/.stamp.$name"
  echo "tools: built $name in $((SECONDS - start))s"
}

k8s_ldflags="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
-X k8s.io/component-base/version.gitMajor=1 \
-X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"

build etcd etcd . "-X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION"
build kube-apiserver k8s k8s.io/kubernetes/cmd/kube-apiserver "$k8s_ldflags"
build kube-controller-manager k8s k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ldflags"
build agnhost k8s k8s.io/kubernetes/test/images/agnhost "$k8s_ldflags"
# helm's default .Capabilities.KubeVersion (used by `helm template`) is the pinned Kubernetes.
build helm helm helm.sh/helm/v3/cmd/helm \
  "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
