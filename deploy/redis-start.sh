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

# One rule for every secret file (deploy/entrypoint.sh has the same): one line, its final
# newline optional. A second line (a note, a rotated password) is refused by name rather than
# dropped: compose's healthcheck and the bot read the file too, and must all agree.
[ -r "$password_file" ] || { echo "redis-start.sh: cannot read $password_file" >&2; exit 2; }
newlines=$(($(wc -l < "$password_file")))
if [ "$newlines" -gt 1 ] || { [ "$newlines" -eq 1 ] && [ -n "$(tail -c 1 "$password_file")" ]; }
then
  echo "redis-start.sh: $password_file has more than one line: put the password alone in it" \
       "(make one with: openssl rand -hex 32 > $password_file)" >&2
  exit 2
fi
password=""
IFS= read -r password < "$password_file" || true  # no final newline, or empty: checked next
case "$password" in
  "" | *[!A-Za-z0-9._~-]*)
    echo "redis-start.sh: $password_file must be URL-safe letters and digits" \
         "(make one with: openssl rand -hex 32)" >&2
    exit 2 ;;
esac

umask 077
# The newline first: a CONF whose last line has none (a comment) would swallow requirepass,
# and Redis would start with no password.
{ cat "$conf"; printf '\nrequirepass %s\n' "$password"; } > "$runtime/redis.conf"
# Redis reads directives case-blind and keeps the last of two: exactly one, and ours, or none.
if [ "$(grep -ciE '^[[:space:]]*requirepass([[:space:]]|$)' "$runtime/redis.conf")" != 1 ] ||
   ! tail -n 1 "$runtime/redis.conf" | grep -q '^requirepass [A-Za-z0-9._~-]*$'; then
  rm -f "$runtime/redis.conf"
  echo "redis-start.sh: $conf sets requirepass itself: remove it (the password comes from" \
       "$password_file)" >&2
  exit 2
fi
exec "${REDIS_SERVER:-redis-server}" "$runtime/redis.conf" "$@"
