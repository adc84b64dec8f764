#!/usr/bin/env bash
# What the test suite needs besides the Python packages, on Debian (what CI runs on; Ubuntu works too):
#   - Chromium and chromedriver, for the feedback app's browser test;
#   - a PostgreSQL server answering at RLHF_TEST_POSTGRES_URL (default: the local server's `test` database,
#     user postgres, no password), for the feedback store's PostgreSQL tests.
# Installs what is missing (apt, as root or through sudo), starts the local cluster if it is stopped, creates
# the `test` database if it is missing, and changes nothing when everything is there: safe to run every time.
#   . .venv/bin/activate && bash scripts/test-setup.sh && python -m pytest
# Each problem it cannot fix is one line on stderr naming the fix, and a non-zero exit.
set -euo pipefail

URL=${RLHF_TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}
URL=${URL/+psycopg/} # psql's spelling of the same URL
LOG=${TMPDIR:-/tmp}/rlhf-test-setup.log

fail() {
    echo "test-setup: $*" >&2
    exit 1
}

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        fail "'$*' needs root: run this script as root or install sudo"
    fi
}

apt_install() {
    command -v apt-get >/dev/null || fail "$* missing and no apt-get here: install them with your package manager"
    echo "test-setup: installing $* (apt-get; log: $LOG)"
    { as_root apt-get update -q && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"; } \
        >"$LOG" 2>&1 || { tail -20 "$LOG" >&2; fail "apt-get install $* failed (the end of its log is above)"; }
}

postgres_answers() {
    command -v psql >/dev/null && psql -w "$URL" -Atqc 'SELECT 1' >/dev/null 2>&1
}

# --- Chromium and its driver (tests/test_feedback_browser.py) ---------------------------------------------
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    echo "test-setup: chromium and chromedriver: present"
else
    apt_install chromium chromium-driver
fi

# --- PostgreSQL (tests/feedback_fixtures.py) ---------------------------------------------------------------
if postgres_answers; then
    echo "test-setup: PostgreSQL answers at $URL"
    exit 0
fi
[[ $URL =~ ^postgresql://([^@/]+@)?(127\.0\.0\.1|localhost)(:([0-9]+))?/([A-Za-z0-9_]+)$ ]] ||
    fail "no PostgreSQL answers at $URL, which is not a local server this script can start: start it, or unset RLHF_TEST_POSTGRES_URL"
PORT=${BASH_REMATCH[4]:-5432}
DATABASE=${BASH_REMATCH[5]}
installed=0
if ! command -v pg_ctlcluster >/dev/null; then
    apt_install postgresql
    installed=1
fi
read -r VERSION CLUSTER STATUS < <(pg_lsclusters -h | awk -v port="$PORT" '$3 == port {print $1, $2, $4; exit}') ||
    fail "no PostgreSQL cluster on port $PORT (pg_lsclusters): create one with pg_createcluster, or set RLHF_TEST_POSTGRES_URL"
if [ "$STATUS" != online ]; then
    echo "test-setup: starting PostgreSQL $VERSION/$CLUSTER on port $PORT"
    as_root pg_ctlcluster --skip-systemctl-redirect "$VERSION" "$CLUSTER" start
    for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p "$PORT" && break || sleep 1; done
fi
if [ "$installed" = 1 ]; then
    # A cluster this script just installed: the tests connect as postgres over TCP from this machine without
    # a password, which Debian's default pg_hba.conf refuses (scram-sha-256). Trust that one role from
    # 127.0.0.1 only; a cluster that was already here keeps its own authentication.
    hba=/etc/postgresql/$VERSION/$CLUSTER/pg_hba.conf
    as_root sed -i '1i host all postgres 127.0.0.1/32 trust  # added by rlhf scripts/test-setup.sh' "$hba"
    as_root pg_ctlcluster --skip-systemctl-redirect "$VERSION" "$CLUSTER" reload
fi
if ! as_root runuser -u postgres -- psql -p "$PORT" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'" |
    grep -q 1; then
    echo "test-setup: creating database $DATABASE"
    as_root runuser -u postgres -- createdb -p "$PORT" "$DATABASE"
fi
postgres_answers || fail "PostgreSQL on port $PORT refuses $URL ($(psql -w "$URL" -Atqc 'SELECT 1' 2>&1 | head -1)):" \
    "let user postgres connect from 127.0.0.1 (pg_hba.conf), or set RLHF_TEST_POSTGRES_URL to a URL that works"
echo "test-setup: PostgreSQL answers at $URL"
