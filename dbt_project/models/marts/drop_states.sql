-- Each partner drop's current state, one row per (partner, drop date): its latest loaded,
-- quarantined or incomplete event (a later delivery of the date replaces an earlier one's state;
-- `skipped` and the steps before the outcome are not states). The one definition of "where a drop
-- stands", for the run report and analysts.

with

drop_events as (
    select * from {{ ref('stg_pipeline__drop_events') }}
),

outcomes as (
    select * from drop_events
    where event in ('loaded', 'quarantined', 'incomplete')
),

final as (
    select
        partner_id,
        drop_date,
        event as state,
        delivery_id,
        rows_received,
        rows_loaded,
        rows_quarantined,
        reasons,
        run_id,
        recorded_at,
        event_id
    from outcomes
    qualify row_number() over (partition by partner_id, drop_date order by event_id desc) = 1
)

select * from final
