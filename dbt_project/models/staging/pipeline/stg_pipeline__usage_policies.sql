with usage_policies as (
    select * from {{ source('pipeline', 'usage_policies') }}
),

final as (
    select
        policy_id,
        description,
        marketing_actions,
        requires_label,
        denied_label
    from usage_policies
)

select * from final
