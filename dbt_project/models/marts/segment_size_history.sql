{{ config(
    materialized='incremental',
    database=target.database,
    schema='history',
    unique_key=['run_date', 'segment_name'],
    full_refresh=false,
) }}
-- Every declared segment's size on each run date the pipeline built (segments), one row per
-- (run date, segment): a re-run or backfill of a date replaces that date's rows (dbt-duckdb's
-- default incremental strategy, given a unique_key). The marts file is
-- built fresh every night, so this history lives in the warehouse file (schema history), and
-- full_refresh=false keeps a `dbt build --full-refresh` from dropping it. On its first build it
-- takes over the rows the run report used to append to audit.segment_size_history.
{%- set legacy = adapter.get_relation(database=target.database, schema='audit', identifier='segment_size_history')
    if execute and not is_incremental() else none %}

with

segments as (
    select * from {{ ref('segments') }}
),

tonight as (
    select
        {{ run_date() }} as run_date,
        segment_name,
        members,
        {{ sql_literal(env_var("PIPELINE_RUN_ID", "")) }} as run_id,
        now() as recorded_at
    from segments
),

{%- if legacy %}

earlier as (
    select
        run_date,
        segment_name,
        members,
        run_id,
        recorded_at
    from {{ legacy }}
    where run_date <> {{ run_date() }}
),
{%- endif %}

final as (
    select * from tonight
    {%- if legacy %}
    union all
    select * from earlier
    {%- endif %}
)

select * from final
