with destinations as (
    select * from {{ source('pipeline', 'destinations') }}
),

final as (
    select
        destination_id,
        destination_type,
        marketing_actions,
        hash_profile,
        default_country_code,
        identifiers,
        export_uri,
        export_format,
        connection_id,
        partner_ids_of,
        coalesce(min_audience_size, 100) as min_audience_size
    from destinations
)

select * from final
