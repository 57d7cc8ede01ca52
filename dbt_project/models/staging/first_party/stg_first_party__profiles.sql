{%- set spec_columns = ['profile_id', 'email', 'phone', 'country', 'consent_marketing', 'snapshot_date'] -%}
{%- set types = var('first_party_attribute_types') -%}
{%- set source_columns = adapter.get_columns_in_relation(source('pipeline', 'first_party_profiles')) | map(attribute='name') | list -%}

select
    profile_id,
    email,
    phone,
    upper(trim(country)) as country,
    cast(consent_marketing as boolean) as has_consent_marketing,
    {%- for column in source_columns if column not in spec_columns %}
    {% if column in types %}try_cast("{{ column }}" as {{ types[column] }}){% else %}"{{ column }}"{% endif %} as "{{ column }}",
    {%- endfor %}
    {%- for column, type in types.items() if column not in source_columns %}
    cast(null as {{ type }}) as "{{ column }}",  -- declared but absent from this snapshot
    {%- endfor %}
    snapshot_date
from {{ source('pipeline', 'first_party_profiles') }}
-- an erased person's profile is left out here the night their request arrives (the data-rights step deletes it after)
where profile_id is null or audit.suppression_key(profile_id) not in (
    select profile_key from {{ ref('int_data_rights_deletions') }}
    where location = 'raw.first_party_profiles' and profile_key is not null)
