#!/bin/sh
# Starts redis-server with deploy/redis.conf and the password from a file: the password goes
# into a private copy of the config (mode 0600, in a folder only this user reads), never onto
# redis-server's command line (/proc/<pid>/cmdline is world-readable).
#
#   redis-start.sh CONF PASSWORD_FILE RUNTIME_DIR [redis-server options, e.g. --dir /data]
# $REDIS_SERVER picks the binary (default: redis-server on PATH).
set -eu
[ $# -ge 3 ] || { sed -n '6p' "$0" >&2; exit 2; }
conf=$1 password_file=$2 runtime=$3
shift 3

password=""
IFS= read -r password < "$password_file" || true  # no final newline, or empty: checked next
case "$password" in
  "" | *[!A-Za-z0-9._~-]*)
    echo "redis-start.sh: $password_file must be URL-safe letters and digits" \
         "(make one with: openssl rand -hex 32)" >&2
    exit 2 ;;
esac

umask 077
{ cat "$conf"; printf 'requirepass %s\n' "$password"; } > "$runtime/redis.conf"
exec "${REDIS_SERVER:-redis-server}" "$runtime/redis.conf" "$@"
