-- Every drop of a partner with an agreement that the warehouse holds rows of (loaded or
-- quarantined), and when it expires (macros expires_on / is_expired: the one definition of the
-- retention rule). The data-rights step deletes the expired drops' rows by it (the mart data_rights_deletions).
with partner_records as (
    select * from {{ source('pipeline', 'partner_records') }}
),

quarantined_rows as (
    select * from {{ source('pipeline', 'quarantined_rows') }}
),

agreements as (
    select * from {{ ref('stg_pipeline__agreements') }}
),

drops as (
    select distinct
        partner_id,
        drop_date
    from partner_records
    union
    select distinct
        partner_id,
        drop_date
    from quarantined_rows
),

final as (
    select
        drops.partner_id,
        drops.drop_date,
        agreements.retention_days,
        {{ expires_on('drops.drop_date', 'agreements.retention_days') }} as expires_on,
        {{ is_expired('drops.drop_date', 'agreements.retention_days') }} as is_expired
    from drops
    inner join agreements using (partner_id)
)

select * from final
