#!/usr/bin/env bash
# Start a local PostgreSQL for amc's storage tests and print its URL (idempotent).
#
#   scripts/postgres.sh                      # then:
#   export AMC_TEST_POSTGRES=postgresql://amc:amc@127.0.0.1:5432/amc
#
# As root with apt, installs Debian's `postgresql` package when it is missing and starts the
# Debian cluster (pg_ctlcluster) on 127.0.0.1:5432. Without root, with the server binaries on
# PATH, it runs a private cluster (initdb + pg_ctl) under $AMC_PG_DIR (default
# /tmp/amc-postgres). It then creates the role and database `amc` (password `amc`).
# Where nothing can be installed it prints how to install PostgreSQL and exits 0 without
# starting anything, so callers (CI, tests) can go on and skip the PostgreSQL tests.
set -euo pipefail

host=127.0.0.1
port=${AMC_PG_PORT:-5432}
url="postgresql://amc:amc@${host}:${port}/amc"

ready() {
  PGPASSWORD=amc psql -h "$host" -p "$port" -U amc -d amc -tAc "select 1" >/dev/null 2>&1
}

as_postgres() {
  # Run a command as the postgres system user (root only).
  if command -v runuser >/dev/null; then runuser -u postgres -- "$@"; else su postgres -c "$*"; fi
}

server_bin() {
  # The directory holding initdb/pg_ctl: on PATH, or Debian's newest versioned folder.
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    dirname "$(command -v initdb)"
    return
  fi
  local newest
  newest=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$newest" ] && echo "$newest"
}

if command -v psql >/dev/null && ready; then
  echo "$url"
  exit 0
fi

if [ -z "$(server_bin)" ] || ! command -v psql >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing PostgreSQL from Debian's packages..." >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    cat >&2 <<'EOF'
PostgreSQL is not installed and this script cannot install it (needs root and apt-get).
Install it, then run this script again:
  Debian/Ubuntu: sudo apt-get install postgresql
  macOS:         brew install postgresql && brew services start postgresql
The PostgreSQL storage tests are skipped while AMC_TEST_POSTGRES is unset.
EOF
    exit 0
  fi
fi

sql() {
  # Run SQL as the superuser over the local socket.
  if [ "$(id -u)" = 0 ]; then
    as_postgres psql -v ON_ERROR_STOP=1 -p "$port" -h "$socket_dir" -d postgres -tAc "$1"
  else
    psql -v ON_ERROR_STOP=1 -p "$port" -h "$socket_dir" -d postgres -tAc "$1"
  fi
}

if [ "$(id -u)" = 0 ] && command -v pg_lsclusters >/dev/null; then
  # Debian: use (or create) the cluster on our port and start it.
  socket_dir=/var/run/postgresql
  cluster=$(pg_lsclusters --no-header | awk -v p="$port" '$3 == p {print $1 " " $2; exit}')
  if [ -z "$cluster" ]; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    pg_createcluster --port "$port" "$version" amc >/dev/null
    cluster="$version amc"
  fi
  read -r version name <<<"$cluster"
  mkdir -p "$socket_dir" && chown postgres:postgres "$socket_dir"
  if ! pg_lsclusters --no-header | awk -v v="$version" -v n="$name" \
    '$1 == v && $2 == n && $4 == "online" {found = 1} END {exit !found}'; then
    pg_ctlcluster "$version" "$name" start -- -o "-c listen_addresses=$host" >/dev/null ||
      pg_ctlcluster "$version" "$name" start
  fi
else
  # A private cluster owned by the user running this script (the postgres user under root).
  bin=$(server_bin)
  data=${AMC_PG_DIR:-/tmp/amc-postgres}
  socket_dir=$data
  run() { if [ "$(id -u)" = 0 ]; then as_postgres "$@"; else "$@"; fi; }
  if [ ! -s "$data/PG_VERSION" ]; then
    mkdir -p "$data"
    [ "$(id -u)" = 0 ] && chown postgres "$data"
    run "$bin/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      >/dev/null
  fi
  if ! run "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    run "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
      -o "-c listen_addresses=$host -p $port -k $socket_dir" start >/dev/null
  fi
  sql() {
    run psql -v ON_ERROR_STOP=1 -U postgres -p "$port" -h "$socket_dir" -d postgres -tAc "$1"
  }
fi

for _ in $(seq 1 30); do
  sql "select 1" >/dev/null 2>&1 && break
  sleep 1
done
if [ "$(sql "select 1 from pg_roles where rolname = 'amc'")" != 1 ]; then
  sql "create role amc login password 'amc'" >/dev/null
fi
if [ "$(sql "select 1 from pg_database where datname = 'amc'")" != 1 ]; then
  sql "create database amc owner amc" >/dev/null
fi
if ! ready; then
  echo "PostgreSQL started but $url does not accept connections; see the server log." >&2
  exit 1
fi
echo "$url"
