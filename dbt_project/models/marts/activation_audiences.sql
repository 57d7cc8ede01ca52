-- depends_on: {{ ref('segment_policy_violations') }}
-- depends_on: {{ ref('destination_policy_violations') }}
-- What each destination should hold for each segment tonight: the members we may send, hashed
-- under the destination's hash profile, with the partner_person_id of the partner whose ids the
-- destination accepts (identifiers partner_id:<partner>) where int_partner_person_ids allows it.
-- Prospect segments' members (profile_id null) are sent with the partner's own identifiers only:
-- its hashes where the destination's hash profile (and country code) is the partner's, its ids
-- where the destination accepts them; prospects carry consent_activation already (int_prospect_records). A member is sent only if they gave us marketing consent
-- (first party) and every partner whose attributes the segment's rule reads, and who holds data
-- about them, says consent_activation = true in its latest record. The activation task sends
-- the difference between this and what the destination already holds.

with segments as (
    select * from {{ ref('int_segments') }}
),

segment_reads as (
    select * from {{ ref('int_segment_reads') }}
),

profile_partner_attributes as (
    select * from {{ ref('profile_partner_attributes') }}
),

-- read by refused and sendable_members: inlined (a scan each), never copied
segment_membership as not materialized (
    select * from {{ ref('segment_membership') }}
),

profiles as (
    select * from {{ ref('stg_first_party__profiles') }}
),

destinations as (
    select * from {{ ref('stg_pipeline__destinations') }}
),

partner_person_ids as (
    select * from {{ ref('int_partner_person_ids') }}
),

prospect_segment_membership as (
    select * from {{ ref('prospect_segment_membership') }}
),

prospect_profiles as (
    select
        partner_id,
        partner_person_id,
        hash_profile,
        default_country_code,
        email_sha256,
        phone_sha256
    from {{ ref('prospect_profiles') }}
),

segment_destinations as (
    select
        segments.segment_name,
        listed.destination_id
    from segments
    cross join unnest(segments.destinations) as listed (destination_id)
),

partners_read as (
    select distinct
        segment_name,
        partner_id
    from segment_reads
    where partner_id is not null
),

partner_consents as (
    select distinct
        profile_id,
        partner_id,
        has_consent_activation
    from profile_partner_attributes
),

-- a partner the rule reads knows this member but was not given consent for activation
refused as (
    select distinct
        segment_membership.segment_name,
        segment_membership.profile_id
    from segment_membership
    inner join partners_read using (segment_name)
    inner join partner_consents using (profile_id, partner_id)
    where not partner_consents.has_consent_activation
),

sendable_members as (
    select
        segment_membership.segment_name,
        segment_membership.profile_id,
        profiles.email,
        profiles.phone
    from segment_membership
    inner join profiles using (profile_id)
    anti join refused using (segment_name, profile_id)
    where profiles.has_consent_marketing
),

-- hashed here, for the members only and only the identifiers the destination takes
member_identifiers as (
    select
        sendable_members.segment_name,
        segment_destinations.destination_id,
        sendable_members.profile_id,
        destinations.hash_profile,
        case
            when list_contains(destinations.identifiers, 'email')
                then sha256({{ normalize_email('sendable_members.email', 'destinations.hash_profile') }})
        end as email_sha256,
        case
            when list_contains(destinations.identifiers, 'phone')
                then sha256({{ normalize_phone('sendable_members.phone', 'destinations.hash_profile', 'destinations.default_country_code') }})
        end as phone_sha256,
        partner_person_ids.partner_person_id
    from sendable_members
    inner join segment_destinations using (segment_name)
    inner join destinations using (destination_id)
    left join partner_person_ids
        on destinations.partner_ids_of = partner_person_ids.partner_id
            and sendable_members.profile_id = partner_person_ids.profile_id
),

prospect_identifiers as (
    select
        prospect_segment_membership.segment_name,
        segment_destinations.destination_id,
        cast(null as varchar) as profile_id,
        destinations.hash_profile,
        case
            when list_contains(destinations.identifiers, 'email') and destinations.hash_profile = prospect_profiles.hash_profile
                then prospect_profiles.email_sha256
        end as email_sha256,
        case
            when
                list_contains(destinations.identifiers, 'phone') and destinations.hash_profile = prospect_profiles.hash_profile
                and destinations.default_country_code = prospect_profiles.default_country_code
                then prospect_profiles.phone_sha256
        end as phone_sha256,
        case when destinations.partner_ids_of = prospect_profiles.partner_id then prospect_profiles.partner_person_id end
            as partner_person_id
    from prospect_segment_membership
    inner join prospect_profiles using (partner_id, partner_person_id)
    inner join segment_destinations using (segment_name)
    inner join destinations using (destination_id)
),

final as (
    select
        segment_name,
        destination_id,
        profile_id,
        hash_profile,
        email_sha256,
        phone_sha256,
        partner_person_id
    from member_identifiers
    where email_sha256 is not null or phone_sha256 is not null or partner_person_id is not null
    union all
    select
        segment_name,
        destination_id,
        profile_id,
        hash_profile,
        email_sha256,
        phone_sha256,
        partner_person_id
    from prospect_identifiers
    where email_sha256 is not null or phone_sha256 is not null or partner_person_id is not null
)

select * from final
