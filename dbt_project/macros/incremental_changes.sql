{#- The incremental strategy `changes`, for a model that selects only what changed since its table was
    last built: rows to write, and rows marked as deletions (config `deletion_rows`, a condition on the
    selected columns). Every selected key's old row is deleted, then the rows that are not deletions are
    inserted, in one transaction (one DuckLake snapshot). dbt's own strategies cannot: delete+insert
    would insert the deletions, and DuckLake's MERGE takes one UPDATE or DELETE action (STACK-NOTES). -#}
{% macro get_incremental_changes_sql(arg_dict) -%}
    {%- set target = arg_dict['target_relation'] -%}
    {%- set source = arg_dict['temp_relation'] -%}
    {%- set unique_key = arg_dict['unique_key'] -%}
    {%- set deletion_rows = config.get('deletion_rows') -%}
    {%- if not unique_key or unique_key is string or not deletion_rows -%}
        {{ exceptions.raise_compiler_error("incremental_strategy 'changes' needs a unique_key list and deletion_rows (" ~ this ~ ")") }}
    {%- endif -%}
    {%- set columns = get_quoted_csv(arg_dict['dest_columns'] | map(attribute='name')) -%}
    delete from {{ target }} as existing
    using {{ source }} as changes
    where
        {%- for key in unique_key %}
        existing.{{ adapter.quote(key) }} = changes.{{ adapter.quote(key) }}{{ " and" if not loop.last }}
        {%- endfor %};

    insert into {{ target }} ({{ columns }})
    select {{ columns }}
    from {{ source }}
    where not ({{ deletion_rows }})
{%- endmacro %}


{#- MD5 of the calling model's code and of `compiled` (the SQL its macros made): stored with each row an
    incremental model makes, so that rows made by older code are told apart and made again. -#}
{% macro model_code_md5(compiled) -%}
    {{ return(local_md5(model.raw_code ~ compiled)) }}
{%- endmacro %}
