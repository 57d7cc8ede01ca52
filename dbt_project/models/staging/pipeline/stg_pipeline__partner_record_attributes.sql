-- One row per partner record: the attributes its partner's agreement declares today that it gives a
-- value for, as a list of (attribute, value) as delivered (text). A list rather than a row per value,
-- so that a model joins records to what it needs before unnesting: a join per record, not per value.
-- A row keeps the value of an attribute an amended agreement dropped; it is left out here.
with partner_records as (
    select * from {{ source('pipeline', 'partner_records') }}
),

agreement_attributes as (
    select * from {{ ref('stg_pipeline__agreement_attributes') }}
),

agreed as (
    select
        partner_id,
        list(attribute) as attributes
    from agreement_attributes
    group by partner_id
),

final as (
    select
        partner_records.partner_id,
        partner_records.drop_date,
        partner_records.partner_record_id,
        list_filter(partner_records.attributes, v -> list_contains(agreed.attributes, v.attribute)) as attribute_values
    from partner_records
    inner join agreed using (partner_id)
)

select * from final
