select
    partner_id,
    attribute,
    type as attribute_type,
    allowed_values,
    min_value,
    max_value,
    usage_labels,
    special_category as is_special_category,
    -- what usage policies see: the uses the partner allows, plus special_category when marked so
    case when special_category then list_append(usage_labels, 'special_category') else usage_labels end as policy_labels,
    description
from {{ source('pipeline', 'agreement_attributes') }}
