-- The ingestion audit log for analysts: counts, reasons and run ids, no row values.
with drop_events as (
    select * from {{ ref('stg_pipeline__drop_events') }}
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
