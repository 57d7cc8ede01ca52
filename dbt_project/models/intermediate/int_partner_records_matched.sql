-- Each valid partner record resolved to at most one profile: by email hash, else by phone hash,
-- under the partner's hash profile. Resolution rule (documented in _intermediate__models.yml):
-- a record whose hash hits several profiles, a profile hit by several partner persons of one
-- partner, or a partner person whose records hit several profiles, is `ambiguous` and linked to
-- nobody. So a partner_person_id maps to at most one profile and never links two profiles.
with partner_records as (
    select * from {{ ref('stg_pipeline__partner_records') }}
),

agreements as (
    select * from {{ ref('stg_pipeline__agreements') }}
),

-- read by both indexes below: inlined (a scan each), never copied
profile_identifiers as not materialized (
    select * from {{ ref('int_profile_identifiers') }}
),

records as (
    select
        partner_records.*,
        agreements.hash_profile,
        agreements.default_country_code
    from partner_records
    inner join agreements using (partner_id)
),

{%- for identifier in ['email', 'phone'] %}

{{ identifier }}_index as (
    -- one row per hash: the profile it identifies, or how many it would (ambiguity)
    select
        hash_profile,
        default_country_code,
        {{ identifier }}_sha256,
        count(*) as profile_count,
        min(profile_id) as profile_id
    from profile_identifiers
    where {{ identifier }}_sha256 is not null
    group by all
),
{%- endfor %}

resolved as materialized (
    select
        records.*,
        case
            when email_index.profile_count is not null then 'email'
            when phone_index.profile_count is not null then 'phone'
        end as hit_via,
        coalesce(email_index.profile_count, phone_index.profile_count) as profile_count,
        case
            when email_index.profile_count = 1 then email_index.profile_id
            when email_index.profile_count is null and phone_index.profile_count = 1 then phone_index.profile_id
        end as candidate_profile_id
    from records
    left join email_index
        on records.hash_profile = email_index.hash_profile
            and records.default_country_code = email_index.default_country_code
            and records.email_sha256 = email_index.email_sha256
    left join phone_index
        on records.hash_profile = phone_index.hash_profile
            and records.default_country_code = phone_index.default_country_code
            and records.phone_sha256 = phone_index.phone_sha256
),

persons_per_profile as (
    -- min <> max: more than one distinct value, as a cheap hash aggregate on narrow columns
    select
        partner_id,
        candidate_profile_id,
        min(partner_person_id) <> max(partner_person_id) as has_several_persons
    from resolved
    where candidate_profile_id is not null
    group by all
),

profiles_per_person as (
    select
        partner_id,
        partner_person_id,
        min(candidate_profile_id) <> max(candidate_profile_id) as has_several_profiles
    from resolved
    where candidate_profile_id is not null and partner_person_id is not null
    group by all
),

checked as (
    select
        resolved.*,
        coalesce(persons_per_profile.has_several_persons, false) as profile_has_several_persons,
        coalesce(profiles_per_person.has_several_profiles, false) as person_has_several_profiles
    from resolved
    left join persons_per_profile using (partner_id, candidate_profile_id)
    left join profiles_per_person using (partner_id, partner_person_id)
),

final as (
    select
        partner_id,
        drop_date,
        partner_record_id,
        partner_person_id,
        email_sha256,
        phone_sha256,
        has_consent_enrichment,
        has_consent_activation,
        consent_at,
        delivery_id,
        loaded_at,
        source_row,
        case
            when hit_via is null then 'unmatched'
            when profile_count > 1 or profile_has_several_persons or person_has_several_profiles then 'ambiguous'
            else hit_via
        end as match_status,
        case
            when profile_count = 1 and not profile_has_several_persons and not person_has_several_profiles
                then candidate_profile_id
        end as profile_id
    from checked
)

select * from final
