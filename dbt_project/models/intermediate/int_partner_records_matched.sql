-- Each valid partner record resolved to at most one profile: by email hash, else by phone hash,
-- under the partner's hash profile. Resolution rule (documented in _intermediate__models.yml):
-- a record whose hash hits several profiles, a profile hit by several partner persons of one
-- partner, or a partner person whose records hit several profiles, is `ambiguous` and linked to
-- nobody. So a partner_person_id maps to at most one profile and never links two profiles.
with records as (
    select
        records.*,
        agreements.hash_profile,
        agreements.default_country_code
    from {{ ref('stg_pipeline__partner_records') }} as records
    inner join {{ ref('stg_pipeline__agreements') }} as agreements using (partner_id)
),

identifiers as (
    select * from {{ ref('int_profile_identifiers') }}
),

email_hits as (
    select records.partner_id, records.drop_date, records.partner_record_id, identifiers.profile_id
    from records
    inner join identifiers
        on identifiers.hash_profile = records.hash_profile
        and identifiers.default_country_code = records.default_country_code
        and identifiers.email_sha256 = records.email_sha256
),

phone_hits as (
    select records.partner_id, records.drop_date, records.partner_record_id, identifiers.profile_id
    from records
    inner join identifiers
        on identifiers.hash_profile = records.hash_profile
        and identifiers.default_country_code = records.default_country_code
        and identifiers.phone_sha256 = records.phone_sha256
),

candidates as (
    select partner_id, drop_date, partner_record_id, 'email' as matched_via, count(distinct profile_id) as profile_count,
        min(profile_id) as profile_id
    from email_hits group by all
    union all
    select partner_id, drop_date, partner_record_id, 'phone', count(distinct profile_id), min(profile_id)
    from phone_hits group by all
),

per_record as (
    -- email wins over phone
    select * from candidates
    qualify row_number() over (partition by partner_id, drop_date, partner_record_id order by matched_via) = 1
),

classified as (
    select
        records.*,
        per_record.matched_via as hit_via,
        per_record.profile_count,
        case when per_record.profile_count = 1 then per_record.profile_id end as candidate_profile_id
    from records
    left join per_record using (partner_id, drop_date, partner_record_id)
),

persons_per_profile as (
    select partner_id, candidate_profile_id, count(distinct partner_person_id) as person_count
    from classified
    where candidate_profile_id is not null
    group by all
),

profiles_per_person as (
    select partner_id, partner_person_id, count(distinct candidate_profile_id) as profile_count_of_person
    from classified
    where candidate_profile_id is not null
    group by all
)

select
    classified.partner_id,
    classified.drop_date,
    classified.partner_record_id,
    classified.partner_person_id,
    classified.email_sha256,
    classified.phone_sha256,
    classified.has_consent_enrichment,
    classified.has_consent_activation,
    classified.consent_at,
    classified.delivery_id,
    classified.loaded_at,
    classified.source_row,
    case
        when classified.hit_via is null then 'unmatched'
        when classified.profile_count > 1 or persons_per_profile.person_count > 1
            or profiles_per_person.profile_count_of_person > 1 then 'ambiguous'
        else classified.hit_via
    end as match_status,
    case when classified.profile_count = 1 and persons_per_profile.person_count = 1
            and profiles_per_person.profile_count_of_person = 1
        then classified.candidate_profile_id end as profile_id
from classified
left join persons_per_profile using (partner_id, candidate_profile_id)
left join profiles_per_person using (partner_id, partner_person_id)
