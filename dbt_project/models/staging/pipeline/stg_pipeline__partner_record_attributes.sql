-- depends_on: {{ ref('stg_pipeline__agreement_attributes') }}
-- One row per partner record: the agreed attributes it gives a value for, as delivered (text).
-- Models join the records they need first and unnest after (see macro partner_attribute_lists).
{{ partner_attribute_lists() }}
