#!/bin/sh
# ClearScan image entrypoint.
#
#   serve [OPTIONS]     wait for the database, migrate, create the first admin, then serve the
#                       UI + API on 0.0.0.0:8000 (the default command)
#   worker [OPTIONS]    the same prestart, then run jobs from the queue (`clearscan worker`)
#   prestart            only the prestart step (a Kubernetes init container or a one-shot job)
#   db upgrade          wait for the database, then apply the migrations
#   anything else       passed to `clearscan` (users create, models import, --help ...)
#
# Secrets from files: for every CLEARSCAN_<NAME>_FILE (and DATABASE_URL_FILE) in the
# environment, CLEARSCAN_<NAME> is set to the file's content (trailing newlines removed), as the
# official PostgreSQL image does; setting both is an error. CLEARSCAN_PRESTART=0 skips the
# prestart step of serve and worker (when a separate job migrates the database).
set -eu

PRESTART="/opt/clearscan/bin/python /opt/clearscan/docker/prestart.py"

die() {
  echo "clearscan-entrypoint: $*" >&2
  exit 2
}

# Names only ([A-Z0-9_]), so the eval below never sees anything but a variable name.
for file_var in $(env | sed -n 's/^\(\(CLEARSCAN_[A-Z0-9_]*\|DATABASE_URL\)_FILE\)=.*$/\1/p'); do
  var=${file_var%_FILE}
  eval "path=\${$file_var}"
  eval "current=\${$var:-}"
  [ -z "$current" ] || die "both $var and $file_var are set; use one"
  [ -f "$path" ] && [ -r "$path" ] || die "$file_var=$path is not a readable file"
  value=$(cat "$path")
  [ -n "$value" ] || die "$file_var=$path is empty"
  export "$var=$value"
  unset "$file_var"
done

prestart() {
  if [ "${CLEARSCAN_PRESTART:-1}" != "0" ]; then
    $PRESTART
  fi
}

case "${1:-serve}" in
  serve)
    [ $# -eq 0 ] || shift
    prestart
    exec clearscan serve --host 0.0.0.0 --port 8000 "$@"
    ;;
  worker)
    shift
    prestart
    exec clearscan worker "$@"
    ;;
  prestart)
    exec $PRESTART
    ;;
  db)
    $PRESTART --wait-only
    exec clearscan "$@"
    ;;
  *)
    exec clearscan "$@"
    ;;
esac
