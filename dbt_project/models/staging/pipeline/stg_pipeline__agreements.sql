with agreements as (
    select * from {{ source('pipeline', 'agreements') }}
),

final as (
    select
        partner_id,
        agreement_id,
        valid_from,
        valid_to,
        hash_profile,
        default_country_code,
        required_consents,
        retention_days,
        max_bad_row_share,
        min_group_size,
        outbox_uri,
        overlap_dimensions,
        dp_epsilon_per_release,
        dp_budget_per_period,
        dp_period,
        seed_set_format,
        partner_id_only_rows,
        coalesce(partner_person_id_usage_labels, []) as partner_person_id_usage_labels
    from agreements
)

select * from final
