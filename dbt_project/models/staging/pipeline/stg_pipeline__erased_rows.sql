{{ config(materialized='table') }}
-- Every raw row, not expired, of a person on the suppression list (stg_pipeline__erasure_keys), as
-- keys (no identifier), one row per (request, row): a partner row, loaded or quarantined, by its
-- email hash, phone hash, (partner, person id) or seed id (v2), keyed by (partner, drop date, file, row); a
-- first-party row by its profile id or canonical email hash, keyed by its profile id's suppression
-- key (profile_key). Staging leaves these rows out (stg_pipeline__partner_records,
-- stg_first_party__profiles), so the marts are right the same night; the data-rights step deletes
-- them after the build (the mart data_rights_deletions). A table, computed once a night: it keys
-- every partner row four times.
with partner_records as (
    select * from {{ source('pipeline', 'partner_records') }}
),

quarantined_rows as (
    select * from {{ source('pipeline', 'quarantined_rows') }}
),

first_party_profiles as (
    select * from {{ source('pipeline', 'first_party_profiles') }}
),

partner_drops as (
    select * from {{ ref('stg_pipeline__partner_drops') }}
),

erasure_keys as (
    select * from {{ ref('stg_pipeline__erasure_keys') }}
),

-- every partner row, its identifiers normalized (audit.normal_hash / audit.normal_person_id); location is the
-- raw table, named as audit.data_deletions names it (a keyword, hence the noqa)
partner_rows as (
    select
        'raw.partner_records' as location,  -- noqa: RF04
        partner_records.partner_id,
        partner_records.drop_date,
        partner_records.source_file,
        partner_records.source_row,
        audit.normal_person_id(partner_records.partner_person_id) as person,
        audit.normal_hash(partner_records.email_sha256) as email,
        audit.normal_hash(partner_records.phone_sha256) as phone,
        audit.normal_person_id(partner_records.seed_id) as seed
    from partner_records
    union all
    select
        'raw.quarantined_rows' as location,  -- noqa: RF04
        quarantined_rows.partner_id,
        quarantined_rows.drop_date,
        quarantined_rows.source_file,
        quarantined_rows.source_row,
        audit.normal_person_id(quarantined_rows.record ->> 'partner_person_id') as person,
        audit.normal_hash(quarantined_rows.record ->> 'email_sha256') as email,
        audit.normal_hash(quarantined_rows.record ->> 'phone_sha256') as phone,
        audit.normal_person_id(quarantined_rows.record ->> 'seed_id') as seed
    from quarantined_rows
),

-- each row's four keys once, then an equi-join with the list (not a key per row and suppression);
-- an expired row is retention's
partner_keys as (
    select
        partner_rows.location,
        partner_rows.partner_id,
        partner_rows.drop_date,
        partner_rows.source_file,
        partner_rows.source_row,
        unnest(['email_sha256', 'phone_sha256', 'partner_person', 'seed_id']) as key_kind,
        unnest([
            audit.suppression_key(partner_rows.email),
            audit.suppression_key(partner_rows.phone),
            audit.suppression_key(partner_rows.partner_id || ':' || partner_rows.person),
            audit.suppression_key(partner_rows.seed)
        ]) as key_value
    from partner_rows
    left join partner_drops
        on
            partner_rows.partner_id = partner_drops.partner_id
            and partner_rows.drop_date = partner_drops.drop_date
    where not coalesce(partner_drops.is_expired, false)
),

profile_keys as (
    select
        first_party_profiles.profile_id,
        unnest(['profile_id', 'email_sha256']) as key_kind,
        unnest([
            audit.suppression_key(first_party_profiles.profile_id),
            audit.suppression_key(sha256({{ normalize_email('first_party_profiles.email', "'canonical'") }}))
        ]) as key_value
    from first_party_profiles
),

erased_partner_rows as (
    select distinct
        erasure_keys.request_id,
        partner_keys.location,
        partner_keys.partner_id,
        partner_keys.drop_date,
        partner_keys.source_file,
        partner_keys.source_row,
        cast(null as varchar) as profile_key
    from partner_keys
    inner join erasure_keys
        on
            partner_keys.key_kind = erasure_keys.identifier_kind
            and partner_keys.key_value = erasure_keys.suppression_key
),

erased_profiles as (
    select distinct
        erasure_keys.request_id,
        'raw.first_party_profiles' as location,  -- noqa: RF04
        cast(null as varchar) as partner_id,
        cast(null as date) as drop_date,
        cast(null as varchar) as source_file,
        cast(null as bigint) as source_row,
        audit.suppression_key(profile_keys.profile_id) as profile_key
    from profile_keys
    inner join erasure_keys
        on
            profile_keys.key_kind = erasure_keys.identifier_kind
            and profile_keys.key_value = erasure_keys.suppression_key
),

final as (
    select * from erased_partner_rows
    union all
    select * from erased_profiles
)

select * from final
