-- One row per profile: our first-party attributes (no raw email or phone) beside every partner
-- attribute, named <partner_id>__<attribute> so nobody mistakes one for the other.
{%- set attributes = agreement_attributes() %}
{%- set value_column = {'integer': 'value_number', 'number': 'value_number', 'boolean': 'value_boolean', 'date': 'value_date', 'string': 'value_text'} %}

with profiles as (
    select * exclude (email, phone) from {{ ref('stg_first_party__profiles') }}
),

partner_values as (
    select * from {{ ref('profile_partner_attributes') }}
),

pivoted as (
    select
        profile_id,
        {%- for partner_id, attribute, attribute_type in attributes %}
        max({{ value_column[attribute_type] }}) filter (where partner_id = '{{ partner_id }}' and attribute = '{{ attribute }}')
            as "{{ partner_id }}__{{ attribute }}",
        {%- endfor %}
        -- which partners have values: a flag per agreed partner, cheaper than an ordered distinct list
        list_filter(
            cast([
                {%- for partner_id in attributes | map(attribute=0) | unique | sort %}
                case when bool_or(partner_id = '{{ partner_id }}') then '{{ partner_id }}' end{{ ", " if not loop.last }}
                {%- endfor %}
            ] as varchar[]),
            partner -> partner is not null
        ) as enriched_by_partners
    from partner_values
    group by profile_id
),

final as (
    select
        profiles.*,
        {%- for partner_id, attribute, attribute_type in attributes %}
        pivoted."{{ partner_id }}__{{ attribute }}",
        {%- endfor %}
        coalesce(pivoted.enriched_by_partners, []) as enriched_by_partners
    from profiles
    left join pivoted using (profile_id)
)

-- our first-party columns are the snapshot's, whatever they are (stg_first_party__profiles)
select * from final  -- noqa: AM04
