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
select
    '{{ model.name | replace("seg_", "", 1) }}' as segment_name,
    profile_id
from {{ ref('enriched_profiles') }}
where {{ segment.rule }}
{% endmacro %}


{% macro segment_rule_partners(rule) %}
    {# partners whose attributes a rule reads: derived from the rule, never listed by hand #}
    {{ return(modules.re.findall('\\b([a-z0-9_]{2,40}?)__[a-z][a-z0-9_]*', rule) | unique | list) }}
{% endmacro %}
