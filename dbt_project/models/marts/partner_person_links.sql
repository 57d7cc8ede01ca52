-- The partner's person ids, each in its partner's own namespace, linked to the one profile it
-- matched by hash or seed. Two profiles are never linked to each other through a partner id, and a
-- partner-id-only row (status partner_id) only reads a link: it never makes one.
with matched_records as (
    select * from {{ ref('int_partner_records_matched') }}
),

final as (
    select
        partner_id,
        partner_person_id,
        profile_id,
        min(match_status) as matched_via,
        min(drop_date) as first_seen_drop_date,
        max(drop_date) as last_seen_drop_date
    from matched_records
    where profile_id is not null and match_status != 'partner_id'
    group by partner_id, partner_person_id, profile_id
)

select * from final
