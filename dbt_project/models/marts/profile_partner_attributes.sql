-- Each partner's attributes for each matched profile, as stated by the partner's latest record
-- about that person, with provenance. The latest record decides: it must carry the agreement's
-- required consents (a withdrawal removes the partner's data) and be within retention; a value
-- it leaves empty is not carried over from older records.

with agreements as (
    select partner_id, retention_days, required_consents from {{ ref('stg_pipeline__agreements') }}
),

latest_records as (
    select
        matched.partner_id,
        matched.profile_id,
        matched.drop_date,
        matched.partner_record_id,
        matched.delivery_id,
        matched.loaded_at,
        matched.has_consent_enrichment,
        matched.has_consent_activation
    from {{ ref('int_partner_records_matched') }} as matched
    where matched.profile_id is not null
    qualify row_number() over (
        partition by matched.partner_id, matched.profile_id
        order by matched.drop_date desc, matched.consent_at desc, matched.partner_record_id desc) = 1
),

usable_records as (
    select
        latest_records.*,
        {{ expires_on('latest_records.drop_date', 'agreements.retention_days') }} as expires_at
    from latest_records
    inner join agreements using (partner_id)
    where latest_records.has_consent_enrichment
        and (latest_records.has_consent_activation or not list_contains(agreements.required_consents, 'consent_activation'))
        and not {{ is_expired('latest_records.drop_date', 'agreements.retention_days') }}
),

-- the records joined first and their values unnested after: a join per record, not per value
attribute_values as (
    select usable_records.*, unnest(records.attribute_values, recursive := true)
    from usable_records
    inner join {{ ref('stg_pipeline__partner_record_attributes') }} as records
        using (partner_id, drop_date, partner_record_id)
),

attributes as (
    select partner_id, attribute, attribute_type from {{ ref('stg_pipeline__agreement_attributes') }}
)

select
    attribute_values.profile_id,
    attribute_values.partner_id,
    attribute_values.attribute,
    attributes.attribute_type,
    attribute_values.value as value_text,
    case when attributes.attribute_type in ('integer', 'number') then cast(attribute_values.value as double) end as value_number,
    case when attributes.attribute_type = 'boolean' then cast(attribute_values.value as boolean) end as value_boolean,
    case when attributes.attribute_type = 'date' then cast(attribute_values.value as date) end as value_date,
    attribute_values.has_consent_activation,
    attribute_values.drop_date,
    attribute_values.delivery_id,
    attribute_values.loaded_at,
    attribute_values.expires_at
from attribute_values
inner join attributes using (partner_id, attribute)
