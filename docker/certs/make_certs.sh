#!/usr/bin/env bash
# Certificates and keys of a secured poisonlab federation (TLS + SuperNode authentication), made with openssl.
#
#   make_certs.sh [-o DIR] [-n NODES] [-H NAME_OR_IP]... [--days DAYS]          everything (on the SuperLink host)
#   make_certs.sh nodes [-o DIR] [-n NODES] [--first ID]                        only SuperNode keys (on a SuperNode host)
#
# What it makes (DIR defaults to generated/ beside this script):
#   DIR/ca/ca.key, ca.crt        the federation's certificate authority; keep ca.key off the federation's machines
#   DIR/superlink/               mounted by the SuperLink host (compose.server.yaml):
#       ca.crt server.crt server.key   TLS of the SuperLink's one port (Fleet, Control and Runtime APIs); the
#                                      certificate names superlink, localhost, 127.0.0.1, ::1 and every -H
#       superexec.secret               shared secret of the SuperLink and its ServerApp SuperExec
#       authorized/supernode-<i>.pub   public keys to register with `flwr supernode register`
#   DIR/supernodes/              mounted by a SuperNode host (compose.supernodes.yaml):
#       ca.crt                         the CA that signed the SuperLink's certificate
#       supernode-<i>.key / .pub       EC P-384 key pair of SuperNode i, OpenSSH format (what flwr 1.41 reads)
#       supernode-<i>.secret           shared secret of SuperNode i and its ClientApp SuperExec
#       attackers.secret               key of the colluders' attacker service, shared by the malicious ClientApps
#
# Existing files are kept, so the script can be rerun to add SuperNodes (-n, --first); delete a file to
# remake it (e.g. superlink/server.crt after adding a -H name). DIR is private (0700): the files inside are
# readable (0644) because the containers read them as Flower's non-root user (uid 49999) through read-only
# mounts, so the folder, not the file mode, keeps them from other users of the host.
set -euo pipefail

usage() { sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

mode=all
if [[ "${1:-}" == nodes || "${1:-}" == all ]]; then mode=$1; shift; fi
out="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/generated"
nodes=5
first=0
days=825
names=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -o|--out) out=$2; shift 2 ;;
    -n|--nodes) nodes=$2; shift 2 ;;
    --first) first=$2; shift 2 ;;
    -H|--host) names+=("$2"); shift 2 ;;
    --days) days=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "make_certs.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done
[[ "$nodes" =~ ^[0-9]+$ && "$first" =~ ^[0-9]+$ && "$days" =~ ^[1-9][0-9]*$ ]] \
  || { echo "make_certs.sh: -n, --first and --days take whole numbers" >&2; exit 2; }
command -v openssl >/dev/null || { echo "make_certs.sh: openssl is required" >&2; exit 1; }

umask 077
mkdir -p "$out"
chmod 700 "$out"
ca="$out/ca" link="$out/superlink" sn="$out/supernodes"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

made() { echo "made  ${1#"$out"/}"; }
kept() { echo "kept  ${1#"$out"/}"; }
public() { chmod 644 "$@"; }  # see the header: readable through the private parent folder only

secret() {  # a random shared secret (Flower reads the file as raw bytes; no newline)
  if [[ -f "$1" ]]; then kept "$1"; return; fi
  openssl rand -hex 32 | tr -d '\n' > "$1"
  public "$1"; made "$1"
}

# flwr 1.41 reads SuperNode keys with cryptography's load_ssh_private_key / load_ssh_public_key: the key
# openssl makes is rewritten in OpenSSH format by ssh-keygen, or by Python's cryptography (which Flower
# itself installs) where ssh-keygen is missing. SSH_KEYGEN picks the ssh-keygen binary (empty: Python).
ssh_keygen=${SSH_KEYGEN-$(command -v ssh-keygen || true)}
python=${PYTHON:-python3}
to_openssh() {  # $1 PEM private key (rewritten in place), $2 public key out, $3 comment
  if [[ -n "$ssh_keygen" ]]; then
    "$ssh_keygen" -q -p -N "" -f "$1" >/dev/null
    printf '%s %s\n' "$("$ssh_keygen" -y -f "$1" | cut -d' ' -f1,2)" "$3" > "$2"
  else
    "$python" - "$1" "$2" "$3" <<'PY'
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization as ser

key_path, pub_path, comment = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
key = ser.load_pem_private_key(key_path.read_bytes(), password=None)
key_path.write_bytes(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()))
pub = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH)
pub_path.write_bytes(pub + b" " + comment.encode() + b"\n")
PY
  fi
}

make_ca() {
  mkdir -p "$ca"
  if [[ -f "$ca/ca.crt" ]]; then kept "$ca/ca.crt"; return; fi
  openssl ecparam -name secp384r1 -genkey -noout -out "$ca/ca.key"
  cat > "$tmp/ca.cnf" <<CNF
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
O = poisonlab federation
CN = poisonlab federation CA
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
CNF
  openssl req -new -x509 -sha384 -days "$((days * 2))" -key "$ca/ca.key" -config "$tmp/ca.cnf" -out "$ca/ca.crt"
  public "$ca/ca.crt"; made "$ca/ca.crt"
}

san_list() {  # the SuperLink's names: its compose service name, loopback (the operator's CLI), then every -H
  local dns=1 ip=1 name
  printf 'DNS.%d = superlink\nDNS.%d = localhost\nIP.%d = 127.0.0.1\nIP.%d = ::1\n' $((dns++)) $((dns++)) $((ip++)) $((ip++))
  for name in "${names[@]+"${names[@]}"}"; do
    if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then
      printf 'IP.%d = %s\n' $((ip++)) "$name"
    else
      printf 'DNS.%d = %s\n' $((dns++)) "$name"
    fi
  done
}

make_server() {
  mkdir -p "$link/authorized"
  chmod 755 "$link" "$link/authorized"
  cp "$ca/ca.crt" "$link/ca.crt"; public "$link/ca.crt"
  if [[ -f "$link/server.crt" ]]; then
    kept "$link/server.crt"
  else
    openssl ecparam -name secp384r1 -genkey -noout -out "$link/server.key"
    cat > "$tmp/server.cnf" <<CNF
[req]
distinguished_name = dn
prompt = no
[dn]
O = poisonlab federation
CN = superlink
[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyAgreement
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = @san
[san]
$(san_list)
CNF
    openssl req -new -sha384 -key "$link/server.key" -config "$tmp/server.cnf" -out "$tmp/server.csr"
    openssl x509 -req -sha384 -days "$days" -in "$tmp/server.csr" -CA "$ca/ca.crt" -CAkey "$ca/ca.key" \
      -CAcreateserial -CAserial "$ca/ca.srl" -extfile "$tmp/server.cnf" -extensions ext -out "$link/server.crt" 2>/dev/null
    public "$link/server.key" "$link/server.crt"; made "$link/server.crt"
  fi
  openssl verify -CAfile "$ca/ca.crt" "$link/server.crt" >/dev/null \
    || { echo "make_certs.sh: $link/server.crt does not verify against $ca/ca.crt" >&2; exit 1; }
  secret "$link/superexec.secret"
}

make_nodes() {
  mkdir -p "$sn"
  chmod 755 "$sn"
  if [[ -f "$ca/ca.crt" ]]; then cp "$ca/ca.crt" "$sn/ca.crt"; public "$sn/ca.crt"; fi
  local i key
  for ((i = first; i < first + nodes; i++)); do
    key="$sn/supernode-$i.key"
    if [[ -f "$key" ]]; then
      kept "$key"
    else
      openssl ecparam -name secp384r1 -genkey -noout -out "$key"
      to_openssh "$key" "$sn/supernode-$i.pub" "poisonlab-supernode-$i"
      public "$key" "$sn/supernode-$i.pub"; made "$key"
    fi
    secret "$sn/supernode-$i.secret"
    if [[ -d "$link/authorized" ]]; then cp "$sn/supernode-$i.pub" "$link/authorized/"; public "$link/authorized/supernode-$i.pub"; fi
  done
  secret "$sn/attackers.secret"
}

if [[ "$mode" == all ]]; then
  make_ca
  make_server
fi
make_nodes
if [[ ! -f "$sn/ca.crt" ]]; then
  echo "note  copy the SuperLink host's superlink/ca.crt to ${sn#"$out"/}/ca.crt, and supernodes/*.pub to its superlink/authorized/"
fi
