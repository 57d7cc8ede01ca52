-- Every profile's email and phone, normalized and hashed under each (hash profile, default
-- country code) an agreement uses: what partner hashes are matched against. Destinations' hashes
-- are made in activation_audiences, for the members sent only. Seed-set agreements count too (seed_set_members).
with profiles as (
    select
        profile_id,
        email,
        phone
    from {{ ref('stg_first_party__profiles') }}
),

agreements as (
    select * from {{ ref('stg_pipeline__agreements') }}
),

partner_records as (
    select * from {{ ref('stg_pipeline__partner_records') }}
),

hash_settings as (
    -- only partners with records to match: an agreement with nothing delivered (or all expired) needs no hashes
    select distinct
        agreements.hash_profile,
        agreements.default_country_code
    from agreements
    where agreements.partner_id in (select partner_records.partner_id from partner_records)
    union
    -- and every agreement that receives a seed set (its members' hashes: the mart seed_set_members)
    select distinct
        agreements.hash_profile,
        agreements.default_country_code
    from agreements
    where agreements.seed_set_format is not null
),

normalized as (
    select
        profiles.profile_id,
        hash_settings.hash_profile,
        hash_settings.default_country_code,
        {{ normalize_email('profiles.email', 'hash_settings.hash_profile') }} as email_normalized,
        {{ normalize_phone('profiles.phone', 'hash_settings.hash_profile', 'hash_settings.default_country_code') }} as phone_normalized
    from profiles
    cross join hash_settings
),

final as (
    select
        profile_id,
        hash_profile,
        default_country_code,
        sha256(email_normalized) as email_sha256,
        sha256(phone_normalized) as phone_sha256
    from normalized
)

select * from final
