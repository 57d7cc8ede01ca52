{{ config(materialized='view') }}
-- Tonight's seed set of every agreement that receives one (spec "Seed sets we send"): per agreement
-- in force on the run date, each of our profiles that consents to partner sharing, with its email
-- and phone hashed under the agreement's hash profile (int_profile_identifiers). Erased people are
-- already out of stg_first_party__profiles; a profile with neither hash has nothing to look up and is
-- left out. The export task (include/partner_pipeline/seeds.py) adds the seed_id (a keyed hash whose
-- key never reaches dbt). A view: the marts file and the analysts' copy hold none of it.
with agreements as (
    select * from {{ ref('stg_pipeline__agreements') }}
),

profiles as (
    select * from {{ ref('stg_first_party__profiles') }}
),

profile_identifiers as (
    select * from {{ ref('int_profile_identifiers') }}
),

seed_agreements as (
    select
        agreements.partner_id,
        agreements.agreement_id,
        agreements.hash_profile,
        agreements.default_country_code
    from agreements
    where
        agreements.seed_set_format is not null
        and agreements.valid_from <= {{ run_date() }}
        and (agreements.valid_to is null or {{ run_date() }} <= agreements.valid_to)
),

sharing_profiles as (
    select profiles.profile_id
    from profiles
    where profiles.has_consent_partner_sharing and profiles.profile_id is not null
),

final as (
    select
        seed_agreements.partner_id,
        seed_agreements.agreement_id,
        profile_identifiers.profile_id,
        profile_identifiers.email_sha256,
        profile_identifiers.phone_sha256
    from seed_agreements
    inner join profile_identifiers
        on
            seed_agreements.hash_profile = profile_identifiers.hash_profile
            and seed_agreements.default_country_code = profile_identifiers.default_country_code
    inner join sharing_profiles on profile_identifiers.profile_id = sharing_profiles.profile_id
    where profile_identifiers.email_sha256 is not null or profile_identifiers.phone_sha256 is not null
)

select * from final
