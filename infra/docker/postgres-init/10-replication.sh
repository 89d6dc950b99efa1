#!/bin/sh
# Run once by the postgres image when it initialises an empty data directory (docker-compose.yml): the role the
# replica and the backups connect as, allowed to replicate from the compose network with a password.
set -eu
psql -v ON_ERROR_STOP=1 -v password="$(cat /run/secrets/replication_password)" \
     --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'password';
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
