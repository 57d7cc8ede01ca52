{#- Every attribute the agreements declare, as [partner_id, attribute, attribute_type] rows, for
    models with a column per attribute (read from the warehouse while the model compiles; a unit
    test overrides it, since a fixture cannot be queried at compile time). -#}
{% macro agreement_attributes() -%}
    {%- set attributes = [] -%}
    {%- if execute -%}
        {%- for row in run_query("select partner_id, attribute, attribute_type from " ~ ref('stg_pipeline__agreement_attributes') ~ " order by 1, 2").rows -%}
            {%- do attributes.append([row[0], row[1], row[2]]) -%}
        {%- endfor -%}
    {%- endif -%}
    {{ return(attributes) }}
{%- endmacro %}
