{{ config(materialized='view') }}
-- Every raw row retention or erasure takes away, as keys (no identifier): what the nightly
-- data-rights step (include/partner_pipeline/data_rights.py) deletes after the build, counting it
-- in audit.data_deletions, and what staging already left out, so the marts are right the same night.
-- - retention: each expired drop (stg_pipeline__partner_drops: the retention rule), in
--   raw.partner_records and raw.quarantined_rows, one row per (location, partner, drop date);
-- - erasure: each row, not expired, of a person on the suppression list (stg_pipeline__erased_rows,
--   computed once a night), one row per (request, row).
-- A view: it holds no row of its own (the marts file and the analysts' copy carry none of it).
with partner_records as (
    select * from {{ source('pipeline', 'partner_records') }}
),

quarantined_rows as (
    select * from {{ source('pipeline', 'quarantined_rows') }}
),

partner_drops as (
    select * from {{ ref('stg_pipeline__partner_drops') }}
),

erased_rows as (
    select * from {{ ref('stg_pipeline__erased_rows') }}
),

-- the drops each raw table holds (location: the raw table, as audit.data_deletions names it; a keyword, hence the noqa)
held_drops as (
    select distinct
        'raw.partner_records' as location,  -- noqa: RF04
        partner_records.partner_id,
        partner_records.drop_date
    from partner_records
    union all
    select distinct
        'raw.quarantined_rows' as location,  -- noqa: RF04
        quarantined_rows.partner_id,
        quarantined_rows.drop_date
    from quarantined_rows
),

expired_drops as (
    select
        held_drops.location,
        held_drops.partner_id,
        held_drops.drop_date
    from held_drops
    inner join partner_drops
        on
            held_drops.partner_id = partner_drops.partner_id
            and held_drops.drop_date = partner_drops.drop_date
    where partner_drops.is_expired
),

final as (
    select
        'retention' as reason,
        cast(null as varchar) as request_id,
        expired_drops.location,
        expired_drops.partner_id,
        expired_drops.drop_date,
        cast(null as varchar) as source_file,
        cast(null as bigint) as source_row,
        cast(null as varchar) as profile_key
    from expired_drops
    union all
    select
        'erasure' as reason,
        erased_rows.request_id,
        erased_rows.location,
        erased_rows.partner_id,
        erased_rows.drop_date,
        erased_rows.source_file,
        erased_rows.source_row,
        erased_rows.profile_key
    from erased_rows
)

select * from final
