-- a view, as activation_log
with syncs as (
    select * from {{ source('activation', 'syncs') }}
),

final as (
    select
        destination_id,
        segment_name,
        batches_applied,
        last_synced_at,
        last_run_date,
        last_run_id,
        full_refresh_run_id,
        members_held
    from syncs
)

select * from final
