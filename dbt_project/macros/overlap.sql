{# The overlap report's groups: a dimension is a first-party column of enriched_profiles, or an
   attribute of the partner (<partner_id>__<attribute>); `attributes` maps "partner.attribute" to
   (type, allowed values). A missing value is the group '(none)'. #}

{% macro dimension_value(partner_id, dimension, attributes) -%}
    {%- if (partner_id ~ '.' ~ dimension) in attributes -%}
        coalesce(cast("{{ partner_id }}__{{ dimension }}" as varchar), '(none)')
    {%- else -%}
        coalesce(cast("{{ dimension }}" as varchar), '(none)')
    {%- endif -%}
{% endmacro %}

{% macro dimension_domain(partner_id, dimension, attributes) -%}
    {%- set key = partner_id ~ '.' ~ dimension -%}
    {%- if key in attributes -%}
        {%- set values = ['true', 'false'] if attributes[key][0] == 'boolean' else attributes[key][1] -%}
        select unnest([{% for v in values %}'{{ v | replace("'", "''") }}', {% endfor %}'(none)']) as value
    {%- else -%}
        select distinct coalesce(cast("{{ dimension }}" as varchar), '(none)') as value from {{ ref('enriched_profiles') }}
        union select '(none)'
    {%- endif -%}
{% endmacro %}

