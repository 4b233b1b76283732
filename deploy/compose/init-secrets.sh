#!/bin/sh
# Create the secrets deploy/compose.yaml mounts, once: random values, without a trailing
# newline, in deploy/compose/secrets/ (git-ignored). A file that exists is kept, so re-running
# changes nothing; delete one to regenerate it (PostgreSQL reads its password only when its
# volume is new: change it there too, with ALTER USER, and database_url with it).
# The folder is private to its owner (0700); the files are 0644 so that the non-root users
# inside the containers (ClearScan 10001, PostgreSQL, Prometheus, Grafana) can read the mounts.
set -eu
dir="$(cd "$(dirname "$0")" && pwd)/secrets"
umask 077
mkdir -p "$dir"
chmod 700 "$dir"

random() {
  od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'
}

put() {
  name=$1
  value=$2
  if [ ! -s "$dir/$name" ]; then
    printf '%s' "$value" > "$dir/$name"
    echo "created deploy/compose/secrets/$name"
  fi
  chmod 644 "$dir/$name"
}

put postgres_password "$(random 24)"
put database_url "postgresql://clearscan:$(tr -d '\n' < "$dir/postgres_password")@postgres:5432/clearscan"
put secret_key "$(random 32)"
put pseudonym_key "$(random 32)"
put audit_key "$(random 32)"
put admin_password "$(random 12)"
put metrics_token "$(random 24)"
put minio_root_password "$(random 24)"
put s3_secret_key "$(random 24)"
put grafana_admin_password "$(random 12)"
