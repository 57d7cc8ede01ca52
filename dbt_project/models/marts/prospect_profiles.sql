-- One row per prospect: a partner's consented customer who is none of ours (int_prospect_records),
-- keyed by (partner_id, partner_person_id) in the partner's own namespace, never merged with our
-- profiles or with another partner's prospects. It carries the partner's hashes (under the
-- partner's own hash profile) and only the attributes its agreement labels `prospecting`, named
-- <partner_id>__<attribute> as in enriched_profiles, from the person's latest record.
{%- set attributes = prospecting_attributes() %}
{%- set value_column = {'integer': 'value_number', 'number': 'value_number', 'boolean': 'value_boolean', 'date': 'value_date', 'string': 'value_text'} %}

-- a table read twice: scanned twice, never copied
with prospect_records as not materialized (
    select * from {{ ref('int_prospect_records') }}
),

partner_record_attributes as (
    select * from {{ ref('stg_pipeline__partner_record_attributes') }}
),

attribute_values as (
    select
        prospect_records.partner_id,
        prospect_records.partner_person_id,
        -- a recursive unnest names its columns after the struct's fields (attribute, value): no alias
        unnest(partner_record_attributes.attribute_values, recursive := true)  -- noqa: AL03
    from prospect_records
    inner join partner_record_attributes using (partner_id, drop_date, partner_record_id)
),

typed_values as (
    select
        partner_id,
        partner_person_id,
        attribute,
        value as value_text,
        try_cast(value as double) as value_number,
        try_cast(value as boolean) as value_boolean,
        try_cast(value as date) as value_date
    from attribute_values
),

pivoted as (
    select
        partner_id,
        partner_person_id
        {%- for partner_id, attribute, attribute_type in attributes %},
        max({{ value_column[attribute_type] }}) filter (where partner_id = '{{ partner_id }}' and attribute = '{{ attribute }}')
            as "{{ partner_id }}__{{ attribute }}"
    {%- endfor %}
    from typed_values
    group by partner_id, partner_person_id
),

final as (
    select
        prospect_records.partner_id,
        prospect_records.partner_person_id,
        prospect_records.hash_profile,
        prospect_records.default_country_code,
        prospect_records.email_sha256,
        prospect_records.phone_sha256,
        prospect_records.drop_date
        {%- for partner_id, attribute, attribute_type in attributes %},
        pivoted."{{ partner_id }}__{{ attribute }}"
    {%- endfor %}
    from prospect_records
    left join pivoted using (partner_id, partner_person_id)
)

select * from final
