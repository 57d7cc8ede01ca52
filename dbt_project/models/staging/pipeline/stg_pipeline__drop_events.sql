with drop_events as (
    -- the log is append-only: a row's rowid is its place in it (no sequence: DuckLake has none);
    -- render(): the table itself under `dbt build --empty` too (its zero-row subquery has no rowid)
    select
        *,
        rowid + 1 as event_id
    from {{ source('audit', 'drop_events').render() }}
),

final as (
    select
        event_id,
        recorded_at,
        run_id,
        partner_id,
        drop_date,
        delivery_id,
        processing_key,
        event,
        rows_received,
        rows_loaded,
        rows_quarantined,
        reasons
    from drop_events
)

select * from final
