#!/usr/bin/env bash
# Offline validation of deploy/kubernetes/ (no cluster, no network beyond Debian's
# packages and PyPI). As root on a fresh Debian 12 it installs what it needs.
#
#   1. kubectl decodes every manifest, and the kustomize rendering, as Kubernetes objects,
#      client-side only (`kubectl annotate --local`; a throwaway kubeconfig points at a
#      closed port, so no server is ever asked).
#   2. kubernetes-validate (PyPI, pinned, in target/k8s-venv; it bundles the OpenAPI
#      schemas) checks every object in strict mode (unknown fields are errors) against
#      each Kubernetes version in K8S_VERSIONS.
#   3. Project checks: every LIVESESSION_* variable set is documented in docs/config.md,
#      the required ones are set, every secretKeyRef key exists in secret.example.yaml,
#      and the example Secret is not among kustomize's resources.
#
# Usage: scripts/k8s-check.sh [DIR]   (default deploy/kubernetes). Exits non-zero on any
# failure; nothing is skipped silently.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(cd "${1:-$ROOT/deploy/kubernetes}" && pwd)
VENV="$ROOT/target/k8s-venv"
# 1.30: the oldest with securityContext.appArmorProfile and the preStop `sleep` action;
# 1.37: the newest the pinned kubernetes-validate bundles.
K8S_VERSIONS=${K8S_VERSIONS:-"1.30.0 1.37.0"}

fail() { echo "k8s-check: FAILED: $*" >&2; exit 1; }
step() { echo "== $*"; }

need_apt() {
    [ "$(id -u)" = 0 ] || fail "$1 is missing and installing it needs root (apt-get install -y $2)"
    step "installing $2 (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

# --- tools ----------------------------------------------------------------------------
command -v kubectl >/dev/null || need_apt kubectl kubernetes-client # Debian 12: 1.20, works for this
command -v kubectl >/dev/null || fail "kubectl is still missing after installing kubernetes-client"
command -v python3 >/dev/null || need_apt python3 python3
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt "python3's venv" python3-venv

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# A kubeconfig whose server is a closed port: every command below is local, and if one
# ever tried the network it would fail at once instead of reaching localhost:8080.
cat > "$WORK/kubeconfig" <<'KC'
apiVersion: v1
kind: Config
clusters: [{name: offline, cluster: {server: "https://127.0.0.1:9"}}]
contexts: [{name: offline, context: {cluster: offline, user: offline}}]
users: [{name: offline, user: {token: offline}}]
current-context: offline
KC
export KUBECONFIG="$WORK/kubeconfig"
KUBECTL_VERSION=$(kubectl version --client 2>/dev/null || true)
KUBECTL_VERSION=$(sed -n '1{s/^Client Version: //; s/.*GitVersion:"\([^"]*\)".*/\1/; p}' <<<"$KUBECTL_VERSION")

# Pinned validator and its dependencies (versions current on PyPI when this was written).
cat > "$WORK/requirements.txt" <<'REQ'
kubernetes-validate==1.37.0
attrs==26.1.0
importlib_resources==7.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
packaging==26.4
PyYAML==6.0.4
referencing==0.37.0
rpds-py==2026.9.1
typing_extensions==4.16.0
REQ
if ! cmp -s "$WORK/requirements.txt" "$VENV/requirements.txt" 2>/dev/null; then
    step "creating $VENV (pip, pinned kubernetes-validate)"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$WORK/requirements.txt"
    cp "$WORK/requirements.txt" "$VENV/requirements.txt"
fi
"$VENV/bin/kubernetes-validate" --version >/dev/null || fail "kubernetes-validate does not run from $VENV"

# --- the manifests ----------------------------------------------------------------------
shopt -s nullglob
FILES=()
for f in "$DIR"/*.yaml "$DIR"/*.yml "$DIR"/*.json; do
    case "$(basename "$f")" in kustomization.yaml | kustomization.yml | Kustomization) ;; *) FILES+=("$f") ;; esac
done
[ ${#FILES[@]} -gt 0 ] || fail "no manifests in $DIR"
[ -f "$DIR/kustomization.yaml" ] || fail "no kustomization.yaml in $DIR"
cd "$DIR"

step "1. kubectl $KUBECTL_VERSION decodes each manifest (client-side only)"
for f in "${FILES[@]}"; do
    out=$(kubectl annotate --local --dry-run=client -o name -f "$f" k8s-check=1 2>&1) ||
        fail "kubectl cannot decode $(basename "$f"): $out"
    [ -n "$out" ] || fail "$(basename "$f") holds no object"
    echo "   $(basename "$f"): $(echo "$out" | tr '\n' ' ')"
done
kubectl kustomize "$DIR" > "$WORK/rendered.yaml" || fail "kubectl kustomize $DIR failed"
out=$(kubectl annotate --local --dry-run=client -o name -f "$WORK/rendered.yaml" k8s-check=1 2>&1) ||
    fail "kubectl cannot decode the kustomize rendering: $out"
echo "   kustomize rendering: $(echo "$out" | wc -l) objects"

step "2. kubernetes-validate --strict against Kubernetes $K8S_VERSIONS"
for v in $K8S_VERSIONS; do
    # An unknown kind or version is only a warning to the validator: a failure here.
    if ! out=$("$VENV/bin/kubernetes-validate" --strict -k "$v" "${FILES[@]}" "$WORK/rendered.yaml" 2>&1) ||
        echo "$out" | grep -Eq '^(WARN|ERROR)'; then
        echo "$out" | grep -Ev '^INFO' >&2
        fail "schema validation against Kubernetes $v"
    fi
    echo "   $v: $(echo "$out" | grep -c '^INFO .* passed') objects passed"
done

step "3. project checks"
"$VENV/bin/python" - "$ROOT/docs/config.md" "$WORK/rendered.yaml" "${FILES[@]}" <<'PY' || fail "project checks"
import re, sys, yaml
config_md, rendered, files = sys.argv[1], sys.argv[2], sys.argv[3:]
documented = set(re.findall(r"`(LIVESESSION_[A-Z0-9_]+)`", open(config_md).read()))
docs = {f: [d for d in yaml.safe_load_all(open(f)) if d] for f in files}
objects = [d for ds in docs.values() for d in ds]
errors = []
secrets = {d["metadata"]["name"]: set(d.get("stringData", {})) | set(d.get("data", {}))
           for d in objects if d.get("kind") == "Secret"}
required = {"LIVESESSION_LISTEN", "LIVESESSION_DATABASE_URL", "LIVESESSION_CLUSTER_SECRET",
            "LIVESESSION_ADMIN_TOKEN", "LIVESESSION_NODE_ID", "LIVESESSION_NODE_ADDR",
            "LIVESESSION_DATA_DIR", "LIVESESSION_SHARED_DIR", "LIVESESSION_PUBLIC_URL",
            "LIVESESSION_TRUSTED_PROXIES"}
workloads = [d for d in objects if d.get("kind") in ("StatefulSet", "Deployment")]
if not workloads:
    errors.append("no StatefulSet")
for w in workloads:
    for c in w["spec"]["template"]["spec"]["containers"]:
        env = {e["name"]: e for e in c.get("env", [])}
        for name in sorted(n for n in env if n.startswith("LIVESESSION_") and n not in documented):
            errors.append(f"{w['metadata']['name']}/{c['name']}: {name} is not in docs/config.md")
        for name in sorted(required - set(env)):
            errors.append(f"{w['metadata']['name']}/{c['name']}: {name} is not set")
        for e in env.values():
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["key"] not in secrets.get(ref["name"], set()):
                errors.append(f"{e['name']}: key {ref['key']!r} of Secret {ref['name']!r} "
                              "is not in the example Secret")
rendered_kinds = [d.get("kind") for d in yaml.safe_load_all(open(rendered)) if d]
if "Secret" in rendered_kinds:
    errors.append("kustomization.yaml applies a Secret (the example's placeholders must never be applied)")
for e in errors:
    print("   ERROR", e)
if errors:
    sys.exit(1)
print(f"   {len(workloads)} workload(s): LIVESESSION_* variables documented, required ones set, secret keys present")
PY

# --- summary ----------------------------------------------------------------------------
kinds=$(grep -h '^kind:' "${FILES[@]}" | awk '{print $2}' | sort | uniq -c | awk '{printf "%s%s x%s", sep, $2, $1; sep=", "}')
echo "k8s-check: OK: ${#FILES[@]} files in ${DIR#"$ROOT"/} ($kinds); kubectl $KUBECTL_VERSION;" \
    "kubernetes-validate $("$VENV/bin/kubernetes-validate" --version 2>&1 | awk '{print $NF}') strict against $K8S_VERSIONS"
