#!/bin/sh
# The official postgres image's first start, for what docker-compose.yml sets: an empty PGDATA is
# initialised with POSTGRES_USER (a superuser) and POSTGRES_PASSWORD, POSTGRES_DB is created, and
# other hosts log in with the password; then the server runs in the foreground.
set -eu
: "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  password_file=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$password_file"
  initdb --username="$POSTGRES_USER" --pwfile="$password_file" --encoding=UTF8 \
    --auth-local=trust --auth-host=scram-sha-256 -D "$PGDATA"
  rm -f "$password_file"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  # Only the local socket while the database is created: nobody connects to a half-made server.
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
  if [ "$POSTGRES_DB" != postgres ]; then
    # From standard input: psql quotes :"db" there, not in a -c command.
    echo 'CREATE DATABASE :"db";' | psql -v ON_ERROR_STOP=1 --username="$POSTGRES_USER" --dbname=postgres \
      --set=db="$POSTGRES_DB"
  fi
  pg_ctl -D "$PGDATA" -m fast -w stop
fi

exec "$@"
