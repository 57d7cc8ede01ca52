{# The business date D the run builds for (the DAG passes --vars run_date); marts are "as of D". #}
{% macro run_date() -%}
    cast('{{ var("run_date", run_started_at.strftime("%Y-%m-%d")) }}' as date)
{%- endmacro %}
