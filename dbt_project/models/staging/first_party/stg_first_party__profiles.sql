{%- set spec_columns = ['profile_id', 'email', 'phone', 'country', 'consent_marketing', 'consent_partner_sharing', 'snapshot_date'] -%}
{%- set types = var('first_party_attribute_types') -%}
{%- set source_columns = adapter.get_columns_in_relation(source('pipeline', 'first_party_profiles')) | map(attribute='name') | list -%}
-- Our customers from the first-party snapshot in force for the run's date, typed: the spec's
-- columns, then the snapshot's own attribute columns (typed as var('first_party_attribute_types')
-- declares; a declared one the snapshot lacks is null). An erased person's profile is left out here
-- the night their request arrives (stg_pipeline__erased_rows); the data-rights step deletes it after.
with first_party_profiles as (
    select * from {{ source('pipeline', 'first_party_profiles') }}
),

erased_rows as (
    select * from {{ ref('stg_pipeline__erased_rows') }}
),

erased_profiles as (
    select erased_rows.profile_key
    from erased_rows
    where
        erased_rows.location = 'raw.first_party_profiles'
        and erased_rows.profile_key is not null
),

final as (
    select
        first_party_profiles.profile_id,
        first_party_profiles.email,
        first_party_profiles.phone,
        upper(trim(first_party_profiles.country)) as country,
        cast(first_party_profiles.consent_marketing as boolean) as has_consent_marketing,
        -- v2, optional: absent or null shares nobody (spec "First-party profiles")
        {% if 'consent_partner_sharing' in source_columns -%}
        coalesce(try_cast(first_party_profiles.consent_partner_sharing as boolean), false)
        {%- else -%}
        false
        {%- endif %} as has_consent_partner_sharing,
        {%- for column in source_columns if column not in spec_columns %}
        {% if column in types %}try_cast(first_party_profiles."{{ column }}" as {{ types[column] }}){% else %}first_party_profiles."{{ column }}"{% endif %} as "{{ column }}",
        {%- endfor %}
        {%- for column, type in types.items() if column not in source_columns %}
        cast(null as {{ type }}) as "{{ column }}",  -- declared but absent from this snapshot
        {%- endfor %}
        first_party_profiles.snapshot_date
    from first_party_profiles
    where
        first_party_profiles.profile_id is null
        or audit.suppression_key(first_party_profiles.profile_id) not in (select erased_profiles.profile_key from erased_profiles)
)

select * from final
