-- What each pending erasure request (raw.erasure_requests, not answered yet) resolves to, as
-- suppression keys (audit.suppression_key: the list never holds an identifier): our profile ids,
-- their email hashed under every hash profile, their phone under every (hash profile, country code)
-- in use, and the partner persons whose rows, loaded or quarantined and not expired, carry those
-- hashes (compared normalized: erasure_hash / erasure_person). The data-rights step adds these keys
-- to audit.erasure_suppressions for good; until then staging already applies them
-- (int_data_rights_deletions).
with pending as (
    select * from {{ source('pipeline', 'erasure_requests') }}
    where request_id not in (
        select request_id from {{ source('audit', 'data_subject_requests') }}
        where request_type = 'erasure' and status = 'done')
),

phone_settings as (
    select hash_profile, default_country_code from {{ source('pipeline', 'agreements') }}
    union
    select hash_profile, default_country_code from {{ source('pipeline', 'destinations') }}
),

requested_hashes as (
    select request_id, unnest(list_append({{ erasure_email_hashes('email') }}, email_sha256)) as email_hash
    from pending
),

profiles as (
    select profile_id, unnest({{ erasure_email_hashes('email') }}) as email_hash
    from {{ source('pipeline', 'first_party_profiles') }}
),

people_found as (
    select distinct pending.request_id, profiles.profile_id
    from pending inner join profiles on pending.profile_id = profiles.profile_id
    union
    select distinct requested_hashes.request_id, profiles.profile_id
    from requested_hashes inner join profiles using (email_hash)
    where email_hash is not null
),

people as (
    select people_found.request_id, first_party.profile_id, first_party.email, first_party.phone
    from people_found
    inner join {{ source('pipeline', 'first_party_profiles') }} as first_party using (profile_id)
),

identifiers as (
    select request_id, 'profile_id' as identifier_kind, profile_id as identifier from pending where profile_id is not null
    union
    select request_id, 'profile_id', profile_id from people
    union
    select request_id, 'email_sha256', unnest({{ erasure_email_hashes('email') }}) from pending
    union
    select request_id, 'email_sha256', email_sha256 from pending
    union
    select request_id, 'email_sha256', unnest({{ erasure_email_hashes('email') }}) from people
    union
    select request_id, 'phone_sha256',
           sha256({{ normalize_phone('phone', 'phone_settings.hash_profile', 'phone_settings.default_country_code') }})
    from people cross join phone_settings
),

-- the partner rows still held after tonight's retention, normalized as erasure_hash / erasure_person say
partner_rows as (
    select partner_id, drop_date, {{ erasure_person('partner_id', 'partner_person_id') }} as person,
           {{ erasure_hash('email_sha256') }} as email, {{ erasure_hash('phone_sha256') }} as phone
    from {{ source('pipeline', 'partner_records') }}
    union all
    select partner_id, drop_date, {{ erasure_person('partner_id', "record->>'partner_person_id'") }},
           {{ erasure_hash("record->>'email_sha256'") }}, {{ erasure_hash("record->>'phone_sha256'") }}
    from {{ source('pipeline', 'quarantined_rows') }}
),

partner_persons as (
    select distinct ids.request_id, 'partner_person' as identifier_kind, rows.person as identifier, rows.partner_id
    from partner_rows as rows
    left join {{ ref('stg_pipeline__partner_drops') }} as drops using (partner_id, drop_date)
    inner join identifiers as ids
        on ids.identifier in (rows.email, rows.phone)
        and ids.identifier_kind in ('email_sha256', 'phone_sha256')
    where rows.person is not null and not coalesce(drops.is_expired, false)
),

found as (
    select request_id, identifier_kind, identifier, cast(null as varchar) as partner_id from identifiers
    union all
    select request_id, identifier_kind, identifier, partner_id from partner_persons
)

select distinct request_id, identifier_kind, partner_id, audit.suppression_key(identifier) as suppression_key
from found
where identifier is not null
