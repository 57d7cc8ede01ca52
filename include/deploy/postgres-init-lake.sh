#!/bin/sh
# The team configuration's PostgreSQL (docker-compose.yaml): run once, when the postgres service's
# volume is first made (/docker-entrypoint-initdb.d). The lake's catalog database, owned by the
# pipeline's role; the analysts' login role, which `python -m partner_pipeline.warehouse init
# --analyst-role lake_analyst` (service lake-init) lets read the catalog; nobody but Airflow's own
# user connects to Airflow's metadata database. Values reach SQL as psql variables (quoted by psql).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v lake_database="$LAKE_DATABASE" -v lake_password="$LAKE_PASSWORD" -v analyst_password="$LAKE_ANALYST_PASSWORD" <<'SQL'
SELECT format('REVOKE CONNECT ON DATABASE %I FROM PUBLIC', current_database()) \gexec
SELECT format('CREATE ROLE pipeline_lake LOGIN PASSWORD %L', :'lake_password') \gexec
SELECT format('CREATE ROLE lake_analyst LOGIN PASSWORD %L', :'analyst_password') \gexec
SELECT format('CREATE DATABASE %I OWNER pipeline_lake', :'lake_database') \gexec
SQL
