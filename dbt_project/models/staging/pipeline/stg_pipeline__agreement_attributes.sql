with agreement_attributes as (
    select * from {{ source('pipeline', 'agreement_attributes') }}
),

labelled as (
    select
        *,
        -- what usage policies see: the uses the partner allows, plus special_category when marked so
        case when special_category then list_append(usage_labels, 'special_category') else usage_labels end as policy_labels
    from agreement_attributes
),

final as (
    select
        partner_id,
        attribute,
        type as attribute_type,
        allowed_values,
        min_value,
        max_value,
        usage_labels,
        special_category as is_special_category,
        policy_labels,
        description
    from labelled
)

select * from final
