-- Every segment's members, one row per segment and profile. A new segment model needs its
-- depends_on line here (dbt says so, naming the line, if it is missing).
-- depends_on: {{ ref('seg_attrition_risk') }}
-- depends_on: {{ ref('seg_high_earning_homeowners') }}
-- depends_on: {{ ref('seg_upsell_prospects') }}
{%- set segments = [] %}
{%- for node in graph.nodes.values() if node.resource_type == 'model' and node.name.startswith('seg_') %}
    {%- do segments.append(node.name) %}
{%- endfor %}

{% for name in segments | sort %}
select segment_name, profile_id from {{ ref(name) }}
{% if not loop.last %}union all{% endif %}
{% endfor %}
