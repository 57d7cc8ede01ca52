{# The business date D the run builds for; marts are "as of D". The DAG passes it in the
   environment, not --vars: a changed --vars makes dbt re-parse the whole project, a changed
   variable only the files that read it. #}
{% macro run_date() -%}
    cast('{{ env_var("PIPELINE_RUN_DATE", run_started_at.strftime("%Y-%m-%d")) }}' as date)
{%- endmacro %}
