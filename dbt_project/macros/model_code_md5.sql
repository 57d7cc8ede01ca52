{#- MD5 of the calling model's code and of `compiled` (the SQL its macros made): stored with each row an
    incremental model makes, so that rows made by older code are told apart and made again. -#}
{% macro model_code_md5(compiled) -%}
    {{ return(local_md5(model.raw_code ~ compiled)) }}
{%- endmacro %}
