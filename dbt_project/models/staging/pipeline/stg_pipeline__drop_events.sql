with drop_events as (
    {{ append_only_log(source('audit', 'drop_events'), 'event_id') }}
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
