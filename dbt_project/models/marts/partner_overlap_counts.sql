-- Exact overlap counts between our profiles and each partner's consented records (the profiles the
-- partner enriches), over EVERY group of the agreement's overlap_dimensions (zero counts
-- included): the domain is fixed by our own profiles and the agreement's allowed values, so the
-- set of groups reveals nothing. Ours only: what a partner gets is built from it with
-- suppression (partner_overlap) and, where the agreement asks, noise (the overlap_reports exposure).
{%- set agreements = [] %}
{%- set pairs = [] %}
{%- if execute %}
{%- set agreements_table, attributes_table = configuration_table('agreements'), configuration_table('agreement_attributes') %}
{%- for row in run_query("select partner_id, to_json(overlap_dimensions) from " ~ agreements_table ~ " order by 1").rows %}
{%- do agreements.append((row[0], fromjson(row[1]))) %}
{%- endfor %}
{%- for row in run_query("select partner_id, attribute, type, to_json(allowed_values) from " ~ attributes_table).rows %}
{%- do pairs.append((row[0] ~ '.' ~ row[1], (row[2], fromjson(row[3]) if row[3] else []))) %}
{%- endfor %}
{%- endif %}
{%- set attributes = dict(pairs) %}

with

-- a table read twice: scanned twice, never copied
enriched_profiles as not materialized (
    select * from {{ ref('enriched_profiles') }}
),
{%- for partner_id, dimensions in agreements %}
{%- set partner = loop.index %}

overlap_{{ partner }} as (
    select
        profile_id,
        {%- for d in dimensions %}
        {{ dimension_value(partner_id, d, attributes) }} as value_{{ loop.index }}{{ "," if not loop.last }}
        {%- endfor %}
    from enriched_profiles
    where list_contains(enriched_by_partners, '{{ partner_id }}')
),
{%- for d in dimensions %}

domain_{{ partner }}_{{ loop.index }} as (
    {{ dimension_domain(partner_id, d, attributes) }}
),
{%- endfor %}

counts_{{ partner }} as (
    select
        '{{ partner_id }}' as partner_id,
        cast({{ dimensions | list | tojson | replace('"', "'") }} as varchar []) as dimension_names,
        [
            {%- for d in dimensions %}
            domain_{{ partner }}_{{ loop.index }}.value{{ "," if not loop.last }}
            {%- endfor %}
        ] as dimension_values,
        count(overlap.profile_id) as profiles
    from domain_{{ partner }}_1
    {%- for d in dimensions[1:] %}
    cross join domain_{{ partner }}_{{ loop.index + 1 }}
    {%- endfor %}
    left join overlap_{{ partner }} as overlap
        on
        {%- for d in dimensions %}
            {{ "and " if not loop.first }}overlap.value_{{ loop.index }} = domain_{{ partner }}_{{ loop.index }}.value
        {%- endfor %}
    group by all
),
{%- endfor %}

final as (
    {%- for partner_id, dimensions in agreements %}
    select * from counts_{{ loop.index }}
    {{ "union all" if not loop.last }}
    {%- else %}
    select
        cast(null as varchar) as partner_id,
        cast(null as varchar []) as dimension_names,
        cast(null as varchar []) as dimension_values,
        cast(null as bigint) as profiles
    from enriched_profiles
    where false
    {%- endfor %}
)

select * from final
