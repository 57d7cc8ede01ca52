-- Each partner's attributes for each matched profile, as stated by the partner's latest record
-- about that person, with provenance. The latest record decides: it must carry the agreement's
-- required consents (a withdrawal removes the partner's data) and be within retention; a value
-- it leaves empty is not carried over from older records.

with agreements as (
    select * from {{ ref('stg_pipeline__agreements') }}
),

matched_records as (
    select * from {{ ref('int_partner_records_matched') }}
),

partner_record_attributes as (
    select * from {{ ref('stg_pipeline__partner_record_attributes') }}
),

agreement_attributes as (
    select * from {{ ref('stg_pipeline__agreement_attributes') }}
),

latest_records as (
    select
        partner_id,
        profile_id,
        drop_date,
        partner_record_id,
        delivery_id,
        loaded_at,
        has_consent_enrichment,
        has_consent_activation
    from matched_records
    where profile_id is not null
    qualify
        row_number() over (
            partition by partner_id, profile_id
            order by drop_date desc, consent_at desc, partner_record_id desc
        ) = 1
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
    select
        usable_records.*,
        -- a recursive unnest names its columns after the struct's fields (attribute, value): no alias
        unnest(partner_record_attributes.attribute_values, recursive := true)  -- noqa: AL03
    from usable_records
    inner join partner_record_attributes using (partner_id, drop_date, partner_record_id)
),

typed_values as (
    select
        attribute_values.*,
        agreement_attributes.attribute_type,
        case when agreement_attributes.attribute_type in ('integer', 'number') then cast(attribute_values.value as double) end as value_number,
        case when agreement_attributes.attribute_type = 'boolean' then cast(attribute_values.value as boolean) end as value_boolean,
        case when agreement_attributes.attribute_type = 'date' then cast(attribute_values.value as date) end as value_date
    from attribute_values
    inner join agreement_attributes using (partner_id, attribute)
),

final as (
    select
        profile_id,
        partner_id,
        attribute,
        attribute_type,
        value as value_text,
        value_number,
        value_boolean,
        value_date,
        has_consent_activation,
        drop_date,
        delivery_id,
        loaded_at,
        expires_at
    from typed_values
)

select * from final
