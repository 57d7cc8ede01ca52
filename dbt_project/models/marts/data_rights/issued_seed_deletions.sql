{{ config(materialized='view') }}
-- Every issued seed (raw.issued_seeds, keyed: int_issued_seeds_keyed) that retention or erasure takes away, as its key (partner,
-- agreement, seed_id): what the nightly data-rights step deletes (data_rights.delete_issued_seeds),
-- counting it in audit.data_deletions.
-- - retention: a seed last sent on d under an agreement keeping rows n days expires as a drop dated d
--   would (macros expires_on / is_expired, the one retention rule); a seed sent every night never does;
-- - erasure: the seeds of a profile on the suppression list (stg_pipeline__erasure_keys, by its
--   profile id's suppression key), so a seed the partner still holds matches nothing later.
-- A view: it holds no row of its own.
-- a table read twice: scanned twice, never copied
with issued_seeds as not materialized (
    select * from {{ ref('int_issued_seeds_keyed') }}
),

agreements as (
    select * from {{ ref('stg_pipeline__agreements') }}
),

erasure_keys as (
    select * from {{ ref('stg_pipeline__erasure_keys') }}
),

erased_profiles as (
    select
        erasure_keys.suppression_key,
        min(erasure_keys.request_id) as request_id
    from erasure_keys
    where erasure_keys.identifier_kind = 'profile_id'
    group by erasure_keys.suppression_key
),

erased as (
    select
        'erasure' as reason,
        erased_profiles.request_id,
        issued_seeds.partner_id,
        issued_seeds.agreement_id,
        issued_seeds.seed_id,
        issued_seeds.last_issued_on
    from issued_seeds
    inner join erased_profiles on issued_seeds.profile_key = erased_profiles.suppression_key
),

expired as (
    select
        'retention' as reason,
        cast(null as varchar) as request_id,
        issued_seeds.partner_id,
        issued_seeds.agreement_id,
        issued_seeds.seed_id,
        issued_seeds.last_issued_on
    from issued_seeds
    left join agreements on issued_seeds.partner_id = agreements.partner_id
    where
        -- an agreement gone from the config keeps no seeds
        agreements.partner_id is null
        or {{ is_expired('issued_seeds.last_issued_on', 'agreements.retention_days') }}
),

final as (
    select * from erased
    union all
    select * from expired
)

select * from final
