{#- Every attribute the agreements declare, as [partner_id, attribute, attribute_type] rows, for
    models with a column per attribute (read from the warehouse while the model compiles; a unit
    test overrides it, since a fixture cannot be queried at compile time). Read from the source
    table, which a fresh warehouse has (warehouse.py _SCHEMA), so `dbt compile` needs no build. -#}
{% macro agreement_attributes() -%}
    {%- set attributes = [] -%}
    {%- set table = configuration_table('agreement_attributes') -%}  {#- at parse time too: the model depends on the source -#}
    {%- if execute -%}
        {%- for row in run_query("select partner_id, attribute, type as attribute_type from " ~ table ~ " order by 1, 2").rows -%}
            {%- do attributes.append([row[0], row[1], row[2]]) -%}
        {%- endfor -%}
    {%- endif -%}
    {{ return(attributes) }}
{%- endmacro %}


{#- A pipeline source table read while a model compiles (the agreements shape the SQL): named in full,
    so `dbt build --empty`, which limits what sources return to zero rows, still sees the agreements. -#}
{% macro configuration_table(name) -%}
    {%- set table = source('pipeline', name) -%}
    {{ return(api.Relation.create(database=table.database, schema=table.schema, identifier=table.identifier)) }}
{%- endmacro %}
