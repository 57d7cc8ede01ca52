{#
  A segment is declared in YAML (models/marts/segments/_segments__models.yml): name, description
  and meta.segment {rule, destinations}. Its rule is a SQL condition over the columns of
  enriched_profiles (first-party columns and <partner_id>__<attribute> columns).
#}

{% macro segment_members() %}
    {%- if not execute -%}
        {# parsing: the YAML meta is merged only afterwards; record the dependency #}
        select null as segment_name, null as profile_id from {{ ref('enriched_profiles') }}
        {{- return('') -}}
    {%- endif -%}
    {%- set segment = model.config.meta.get('segment') -%}
    {%- if segment is none or not segment.get('rule') -%}
        {{ exceptions.raise_compiler_error("segment model " ~ model.name ~ " needs meta.segment.rule in _segments__models.yml") }}
    {%- endif %}
    {%- set available = adapter.get_columns_in_relation(ref('enriched_profiles')) | map(attribute='name') | list -%}
    {%- for column in modules.re.findall('\\b([a-z0-9_]{2,40}__[a-z][a-z0-9_]*)\\b', segment.rule) if column not in available %}
        {{ exceptions.raise_compiler_error("segment " ~ model.name ~ " reads " ~ column ~ ", which enriched_profiles does not have "
            ~ "(no agreement for that partner, or the attribute was renamed). Fix meta.segment.rule in _segments__models.yml "
            ~ "or the agreement in include/agreements.") }}
    {%- endfor %}
select
    '{{ model.name | replace("seg_", "", 1) }}' as segment_name,
    profile_id
from {{ ref('enriched_profiles') }}
where {{ segment.rule }}
{% endmacro %}

