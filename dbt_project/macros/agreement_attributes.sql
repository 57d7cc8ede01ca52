{#- Every attribute name any agreement declares, for models that need one column per attribute
    (read from the warehouse while the model compiles; a unit test overrides it). -#}
{% macro agreement_attribute_names() -%}
    {%- set names = [] -%}
    {%- if execute -%}
        {%- for row in run_query("select distinct attribute from " ~ ref('stg_pipeline__agreement_attributes') ~ " order by 1").rows -%}
            {%- do names.append(row[0]) -%}
        {%- endfor -%}
    {%- endif -%}
    {{ return(names) }}
{%- endmacro %}
