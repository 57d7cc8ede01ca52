-- The latest value of each partner attribute for each matched profile, with provenance. A
-- partner's data enriches a profile only while the person's latest record from that partner
-- carries the agreement's required consents, and never past the agreement's retention.
{%- set run_date = "cast('" ~ var('run_date', run_started_at.strftime('%Y-%m-%d')) ~ "' as date)" %}

with matched as (
    select * from {{ ref('int_partner_records_matched') }} where profile_id is not null
),

agreements as (
    select * from {{ ref('stg_pipeline__agreements') }}
),

consent_state as (
    -- the latest word of the partner on this person decides
    select
        matched.partner_id,
        matched.profile_id,
        matched.has_consent_enrichment
            and (not list_contains(agreements.required_consents, 'consent_activation') or matched.has_consent_activation)
            as may_enrich
    from matched
    inner join agreements using (partner_id)
    qualify row_number() over (
        partition by matched.partner_id, matched.profile_id
        order by matched.drop_date desc, matched.consent_at desc, matched.partner_record_id desc) = 1
),

values_with_provenance as (
    select
        matched.profile_id,
        matched.partner_id,
        attribute_values.attribute,
        attribute_values.attribute_type,
        attribute_values.value_text,
        attribute_values.value_number,
        attribute_values.value_boolean,
        attribute_values.value_date,
        matched.drop_date,
        matched.delivery_id,
        matched.loaded_at,
        matched.consent_at,
        matched.partner_record_id,
        matched.drop_date + agreements.retention_days * interval 1 day as expires_at
    from matched
    inner join {{ ref('stg_pipeline__partner_attribute_values') }} as attribute_values
        using (partner_id, drop_date, partner_record_id)
    inner join agreements using (partner_id)
    inner join consent_state using (partner_id, profile_id)
    where consent_state.may_enrich and matched.has_consent_enrichment
)

select
    profile_id,
    partner_id,
    attribute,
    attribute_type,
    value_text,
    value_number,
    value_boolean,
    value_date,
    drop_date,
    delivery_id,
    loaded_at,
    cast(expires_at as date) as expires_at
from values_with_provenance
where expires_at > {{ run_date }}
qualify row_number() over (
    partition by profile_id, partner_id, attribute
    order by drop_date desc, consent_at desc, partner_record_id desc) = 1
