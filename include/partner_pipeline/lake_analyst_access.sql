-- Analysts' read-only access to the lake's PostgreSQL catalog (the team configuration), applied by
-- `python -m partner_pipeline.warehouse init --analyst-role ROLE` (lake.grant_analysts) once the lake is made,
-- again after a DuckLake upgrade. {role}: the analysts' role; {readable}: (schema, table) pairs of
-- lake.ANALYST_TABLES, table NULL for a whole schema.
-- The catalog holds no row of data (inlining is off: lake.attach), but its statistics hold each
-- column's smallest and largest value, per table and per file: of a raw table, an email. Row-level
-- security lets the role read only the statistics of what it may read; the files themselves are
-- kept from it by object storage (its keys read only lake.analyst_prefixes). The catalog's owner,
-- the pipeline's role, is not subject to these policies.
GRANT USAGE ON SCHEMA public TO {role};
GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {role};
CREATE OR REPLACE FUNCTION pg_temp.restrict_statistics(stats regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', stats);
    EXECUTE format('DROP POLICY IF EXISTS analysts_read_their_tables ON %s', stats);
    EXECUTE format($policy$
        CREATE POLICY analysts_read_their_tables ON %s FOR SELECT TO {role} USING (table_id IN (
            SELECT t.table_id FROM ducklake_table t JOIN ducklake_schema s ON s.schema_id = t.schema_id
            JOIN (VALUES {readable}) AS r (schema_name, table_name)
              ON r.schema_name = s.schema_name AND (r.table_name IS NULL OR r.table_name = t.table_name)))$policy$, stats);
END $$;
SELECT pg_temp.restrict_statistics(stats) FROM (VALUES ('ducklake_table_column_stats'::regclass), ('ducklake_file_column_stats'),
    ('ducklake_file_variant_stats'), ('ducklake_file_partition_value')) AS s (stats);
