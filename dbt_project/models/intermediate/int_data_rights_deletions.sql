-- Every raw row retention or erasure takes away, as keys (no identifier): what the nightly
-- data-rights step (include/partner_pipeline/data_rights.py) deletes after the build, counting it
-- in audit.data_deletions, and what staging already leaves out, so the marts are right the same night.
-- - retention: each expired drop (stg_pipeline__partner_drops), in raw.partner_records and
--   raw.quarantined_rows, one row per (location, partner, drop date);
-- - erasure: each row, not expired, of a person on the suppression list (audit.erasure_suppressions,
--   plus the keys tonight's requests resolve to, int_erasure_identifiers): a partner row by its
--   email hash, phone hash or (partner, person id), keyed by (partner, drop date, file, row); a
--   first-party row by its profile id or canonical email hash, keyed by its profile id's suppression key.
with suppressions as (
    select request_id, identifier_kind, suppression_key from {{ source('audit', 'erasure_suppressions') }}
    union
    select request_id, identifier_kind, suppression_key from {{ ref('int_erasure_identifiers') }}
),

partner_rows as (
    select 'raw.partner_records' as location, partner_id, drop_date, source_file, source_row,
           {{ erasure_person_id('partner_person_id') }} as person,
           {{ erasure_hash('email_sha256') }} as email, {{ erasure_hash('phone_sha256') }} as phone
    from {{ source('pipeline', 'partner_records') }}
    union all
    select 'raw.quarantined_rows', partner_id, drop_date, source_file, source_row,
           {{ erasure_person_id("record->>'partner_person_id'") }},
           {{ erasure_hash("record->>'email_sha256'") }}, {{ erasure_hash("record->>'phone_sha256'") }}
    from {{ source('pipeline', 'quarantined_rows') }}
),

classified as (
    select partner_rows.*, coalesce(drops.is_expired, false) as is_expired
    from partner_rows
    left join {{ ref('stg_pipeline__partner_drops') }} as drops using (partner_id, drop_date)
),

partner_keys as (
    -- each row's three keys once, then an equi-join with the list (not a key per row and suppression)
    select location, partner_id, drop_date, source_file, source_row, unnest([
        {'key_kind': 'email_sha256', 'key_value': audit.suppression_key(email)},
        {'key_kind': 'phone_sha256', 'key_value': audit.suppression_key(phone)},
        {'key_kind': 'partner_person', 'key_value': audit.suppression_key(partner_id || ':' || person)}], recursive := true)
    from classified
    where not is_expired
),

first_party as (
    select profile_id, unnest([
        {'key_kind': 'profile_id', 'key_value': audit.suppression_key(profile_id)},
        {'key_kind': 'email_sha256', 'key_value': audit.suppression_key(sha256({{ normalize_email('email', "'canonical'") }}))}], recursive := true)
    from {{ source('pipeline', 'first_party_profiles') }}
)

select distinct 'retention' as reason, cast(null as varchar) as request_id, location, partner_id, drop_date,
       cast(null as varchar) as source_file, cast(null as bigint) as source_row, cast(null as varchar) as profile_key
from classified
where is_expired

union all

select distinct 'erasure', s.request_id, t.location, t.partner_id, t.drop_date, t.source_file, t.source_row, null
from partner_keys as t
inner join suppressions as s on s.identifier_kind = t.key_kind and s.suppression_key = t.key_value

union all

select distinct 'erasure', s.request_id, 'raw.first_party_profiles', null, null, null, null, audit.suppression_key(t.profile_id)
from first_party as t
inner join suppressions as s on s.identifier_kind = t.key_kind and s.suppression_key = t.key_value
