#!/bin/sh
# Runs a ponybot process with its secrets read from files, never from a command line or an
# image: DISCORD_TOKEN from <dir>/discord_token, and the Redis password from
# <dir>/redis_password put into REDIS_URL (which names host, port and database only). <dir> is
# systemd's $CREDENTIALS_DIRECTORY (LoadCredential=) or Docker's /run/secrets (compose
# secrets). A variable already set is left alone. Then it execs its arguments.
#
#   ponybot-entrypoint python -m bot
set -eu

dir=${CREDENTIALS_DIRECTORY:-/run/secrets}

# `read` is a shell builtin: the secret never appears in any process's argv.
# A last line without a newline still counts; an empty file is an empty secret (refused below).
# One rule for every secret file (deploy/redis-start.sh has the same): one line, its final
# newline optional; a second line (a note, a rotated secret) is refused by name, not dropped.
secret() {
  lines=$(($(wc -l < "$1")))
  if [ "$lines" -gt 1 ] || { [ "$lines" -eq 1 ] && [ -n "$(tail -c 1 "$1")" ]; }; then
    echo "ponybot-entrypoint: $1 has more than one line: put the secret alone in it" >&2
    exit 2  # a problem only the operator can fix: not restarted (README)
  fi
  value=""
  IFS= read -r value < "$1" || true
}

if [ -z "${DISCORD_TOKEN:-}" ] && [ -r "$dir/discord_token" ]; then
  secret "$dir/discord_token"
  export DISCORD_TOKEN="$value"
fi

if [ -r "$dir/redis_password" ] && [ -n "${REDIS_URL:-}" ]; then
  case "$REDIS_URL" in
    *@*) ;;  # the URL carries its own credentials
    *://*)
      secret "$dir/redis_password"
      case "$value" in
        "" | *[!A-Za-z0-9._~-]*)
          echo "ponybot-entrypoint: $dir/redis_password must be URL-safe letters and digits" \
               "(make one with: openssl rand -hex 32)" >&2
          exit 2 ;;  # a problem only the operator can fix: not restarted (README)
      esac
      export REDIS_URL="${REDIS_URL%%://*}://:$value@${REDIS_URL#*://}" ;;
  esac
fi

exec "$@"
