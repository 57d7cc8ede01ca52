{#- An append-only log (audit.drop_events, activation.activation_log) with its rows numbered in the order
    they were written: the rowid, which DuckLake keeps as row lineage and the DuckDB file keeps for a
    table never deleted from (neither has a sequence the pipeline could use: DuckLake has none). render():
    the table itself under `dbt build --empty` too, whose zero-row subquery has no rowid. -#}
{% macro append_only_log(relation, id_column) -%}
    select
        *,
        rowid + 1 as {{ id_column }}
    from {{ relation.render() }}
{%- endmacro %}
