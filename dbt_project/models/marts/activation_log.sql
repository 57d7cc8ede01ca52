-- a view: it shows the log as the activation tasks left it (on the lake, as of the snapshot read), after
-- tonight's build; publishing the file copy makes it a table
with activation_log as (
    -- append-only: a row's rowid is its place in the log (no sequence: DuckLake has none);
    -- render(): the table itself under `dbt build --empty` too (its zero-row subquery has no rowid)
    select
        *,
        rowid + 1 as log_id
    from {{ source('activation', 'activation_log').render() }}
),

final as (
    select
        log_id,
        logged_at,
        run_id,
        run_date,
        destination_id,
        segment_name,
        operation,
        batch_number,
        adds,
        removes,
        attempt,
        status,
        response_code,
        idempotency_key,
        detail
    from activation_log
)

select * from final
