-- The partner person id we may send with each profile, per partner: the person linked to the
-- profile (partner_person_links: one profile per person, ambiguous persons are linked to nobody)
-- whose latest record says consent_activation = true. Which destinations may receive it is the
-- usage-policy check's (destination_policy_violations).
with partner_person_links as (
    select * from {{ ref('partner_person_links') }}
),

matched_records as (
    select * from {{ ref('int_partner_records_matched') }}
),

latest_consents as (
    select
        partner_id,
        partner_person_id,
        has_consent_activation
    from matched_records
    qualify
        row_number() over (
            partition by partner_id, partner_person_id
            order by drop_date desc, consent_at desc, partner_record_id desc
        ) = 1
),

final as (
    select
        partner_person_links.partner_id,
        partner_person_links.profile_id,
        partner_person_links.partner_person_id
    from partner_person_links
    inner join latest_consents using (partner_id, partner_person_id)
    where latest_consents.has_consent_activation
)

select * from final
