{{ config(materialized='table') }}
-- What each pending erasure request (raw.erasure_requests, not answered yet) resolves to, as
-- suppression keys (audit.suppression_key: the list never holds an identifier): our profile ids,
-- their email hashed under every hash profile, their phone under every (hash profile, country code)
-- in use, the seeds issued for their profiles (v2, kind seed_id: our own tokens, unique across agreements,
-- so a row of any partner carrying one is found), and the
-- partner persons whose rows, loaded or quarantined and not expired, carry those hashes or seeds
-- (compared normalized: audit.normal_hash, audit.normal_person_id), so a person's partner-id-only
-- rows go with them. The data-rights step
-- adds these keys to audit.erasure_suppressions for good (the mart data_rights_erasure_keys); until
-- then staging already applies them (stg_pipeline__erasure_keys, stg_pipeline__erased_rows).
-- A table: it reads every partner row, and both of those read it.
with erasure_requests as (
    select * from {{ source('pipeline', 'erasure_requests') }}
),

data_subject_requests as (
    select * from {{ source('audit', 'data_subject_requests') }}
),

agreements as (
    select * from {{ source('pipeline', 'agreements') }}
),

destinations as (
    select * from {{ source('pipeline', 'destinations') }}
),

-- a table read twice: scanned twice, never copied
first_party_profiles as not materialized (
    select * from {{ source('pipeline', 'first_party_profiles') }}
),

partner_records as (
    select * from {{ source('pipeline', 'partner_records') }}
),

quarantined_rows as (
    select * from {{ source('pipeline', 'quarantined_rows') }}
),

issued_seeds as (
    select * from {{ source('pipeline', 'issued_seeds') }}
),

partner_drops as (
    select * from {{ ref('stg_pipeline__partner_drops') }}
),

pending as (
    select * from erasure_requests
    where
        request_id not in (
            select data_subject_requests.request_id from data_subject_requests
            where
                data_subject_requests.request_type = 'erasure'
                and data_subject_requests.status = 'done'
        )
),

phone_settings as (
    select
        agreements.hash_profile,
        agreements.default_country_code
    from agreements
    union
    select
        destinations.hash_profile,
        destinations.default_country_code
    from destinations
),

requested_hashes as (
    select
        pending.request_id,
        unnest(list_append({{ erasure_email_hashes('pending.email') }}, pending.email_sha256)) as email_hash
    from pending
),

profile_hashes as (
    select
        first_party_profiles.profile_id,
        unnest({{ erasure_email_hashes('first_party_profiles.email') }}) as email_hash
    from first_party_profiles
    -- hashing every profile is for a night with requests; on the others nothing is read past this
    where exists (select 1 from pending)
),

people_found as (
    select distinct
        pending.request_id,
        profile_hashes.profile_id
    from pending
    inner join profile_hashes on pending.profile_id = profile_hashes.profile_id
    union
    select distinct
        requested_hashes.request_id,
        profile_hashes.profile_id
    from requested_hashes
    inner join profile_hashes on requested_hashes.email_hash = profile_hashes.email_hash
    where requested_hashes.email_hash is not null
),

people as (
    select
        people_found.request_id,
        first_party_profiles.profile_id,
        first_party_profiles.email,
        first_party_profiles.phone
    from people_found
    inner join first_party_profiles on people_found.profile_id = first_party_profiles.profile_id
),

identifiers as (
    select
        pending.request_id,
        'profile_id' as identifier_kind,
        pending.profile_id as identifier
    from pending
    where pending.profile_id is not null
    union
    select
        people.request_id,
        'profile_id' as identifier_kind,
        people.profile_id as identifier
    from people
    union
    select
        pending.request_id,
        'email_sha256' as identifier_kind,
        unnest({{ erasure_email_hashes('pending.email') }}) as identifier
    from pending
    union
    select
        pending.request_id,
        'email_sha256' as identifier_kind,
        pending.email_sha256 as identifier
    from pending
    union
    select
        people.request_id,
        'email_sha256' as identifier_kind,
        unnest({{ erasure_email_hashes('people.email') }}) as identifier
    from people
    union
    select
        people.request_id,
        'phone_sha256' as identifier_kind,
        sha256({{ normalize_phone('people.phone', 'phone_settings.hash_profile', 'phone_settings.default_country_code') }}) as identifier
    from people
    cross join phone_settings
),

-- the seeds issued for the erased profiles, under any agreement
seeds as (
    select distinct
        identifiers.request_id,
        'seed_id' as identifier_kind,
        audit.normal_person_id(issued_seeds.seed_id) as identifier
    from identifiers
    inner join issued_seeds on identifiers.identifier = issued_seeds.profile_id
    where identifiers.identifier_kind = 'profile_id'
),

-- every partner row, its identifiers normalized (audit.normal_hash / audit.normal_person_id)
partner_rows as (
    select
        partner_records.partner_id,
        partner_records.drop_date,
        partner_records.partner_id || ':' || audit.normal_person_id(partner_records.partner_person_id) as person,
        audit.normal_hash(partner_records.email_sha256) as email,
        audit.normal_hash(partner_records.phone_sha256) as phone,
        audit.normal_person_id(partner_records.seed_id) as seed
    from partner_records
    union all
    select
        quarantined_rows.partner_id,
        quarantined_rows.drop_date,
        quarantined_rows.partner_id || ':' || audit.normal_person_id(quarantined_rows.record ->> 'partner_person_id') as person,
        audit.normal_hash(quarantined_rows.record ->> 'email_sha256') as email,
        audit.normal_hash(quarantined_rows.record ->> 'phone_sha256') as phone,
        audit.normal_person_id(quarantined_rows.record ->> 'seed_id') as seed
    from quarantined_rows
),

-- the partner rows to search: none on a night without requests
searched_rows as (
    select * from partner_rows
    where exists (select 1 from pending)
),

-- the partner persons whose rows still held after tonight's retention carry one of those hashes
partner_persons as (
    select distinct
        identifiers.request_id,
        'partner_person' as identifier_kind,
        searched_rows.person as identifier,
        searched_rows.partner_id
    from searched_rows
    left join partner_drops
        on
            searched_rows.partner_id = partner_drops.partner_id
            and searched_rows.drop_date = partner_drops.drop_date
    inner join identifiers
        on
            identifiers.identifier in (searched_rows.email, searched_rows.phone)
            and identifiers.identifier_kind in ('email_sha256', 'phone_sha256')
    where
        searched_rows.person is not null
        and not coalesce(partner_drops.is_expired, false)
    union
    select distinct
        seeds.request_id,
        'partner_person' as identifier_kind,
        searched_rows.person as identifier,
        searched_rows.partner_id
    from searched_rows
    left join partner_drops
        on
            searched_rows.partner_id = partner_drops.partner_id
            and searched_rows.drop_date = partner_drops.drop_date
    inner join seeds on searched_rows.seed = seeds.identifier
    where
        searched_rows.person is not null
        and not coalesce(partner_drops.is_expired, false)
),

found as (
    select
        identifiers.request_id,
        identifiers.identifier_kind,
        identifiers.identifier,
        cast(null as varchar) as partner_id
    from identifiers
    union all
    select
        seeds.request_id,
        seeds.identifier_kind,
        seeds.identifier,
        cast(null as varchar) as partner_id
    from seeds
    union all
    select
        partner_persons.request_id,
        partner_persons.identifier_kind,
        partner_persons.identifier,
        partner_persons.partner_id
    from partner_persons
),

final as (
    select distinct
        request_id,
        identifier_kind,
        partner_id,
        audit.suppression_key(identifier) as suppression_key
    from found
    where identifier is not null
)

select * from final
