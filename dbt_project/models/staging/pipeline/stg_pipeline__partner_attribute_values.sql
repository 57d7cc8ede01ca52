-- One row per partner record and attribute with a value, typed by the agreement.
with attribute_values as (
    {{ unpivot_partner_attributes() }}
),

attributes as (
    select * from {{ ref('stg_pipeline__agreement_attributes') }}
)

select
    attribute_values.partner_id,
    cast(attribute_values.drop_date as date) as drop_date,
    attribute_values.partner_record_id,
    attribute_values.attribute,
    attributes.attribute_type,
    attribute_values.value as value_text,
    case when attributes.attribute_type in ('integer', 'number') then cast(attribute_values.value as double) end as value_number,
    case when attributes.attribute_type = 'boolean' then cast(attribute_values.value as boolean) end as value_boolean,
    case when attributes.attribute_type = 'date' then cast(attribute_values.value as date) end as value_date
from attribute_values
inner join attributes using (partner_id, attribute)
