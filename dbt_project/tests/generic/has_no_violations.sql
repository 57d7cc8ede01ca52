{#- Fails the build, listing every row's `message` under `heading`, when the model has any row (the
    policy-violation views). DuckDB's error() makes dbt show the messages rather than a row count; it
    sits in the filter because dbt only counts this query's rows, and a projection the count does not
    need is never evaluated. -#}
{% test has_no_violations(model, heading) %}
with found as (
    select
        count(*) as violations,
        string_agg(message, chr(10) order by message) as messages
    from {{ model }}
)

select violations
from found
where violations > 0
    and error({{ sql_literal(heading ~ ':') }} || chr(10) || messages) is null
{% endtest %}
