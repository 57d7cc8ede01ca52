select
    partner_id,
    attribute,
    type as attribute_type,
    allowed_values,
    min_value,
    max_value,
    usage_labels,
    special_category as is_special_category,
    description
from {{ source('pipeline', 'agreement_attributes') }}
