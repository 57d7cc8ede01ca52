{#
  The pipeline keeps one raw table per partner (raw.<partner_id>__records, agreed columns only).
  These macros read them all, whatever partners the agreements name today; before the first
  load they give an empty relation of the same shape.
#}

{% macro partner_raw_tables() %}
    {% if not execute %}{{ return([]) }}{% endif %}
    {% set found = run_query("select table_name from information_schema.tables where table_schema = 'raw' and table_name like '%\\_\\_records' escape '\\' order by table_name") %}
    {{ return(found.columns[0].values() | list) }}
{% endmacro %}


{% macro partner_record_columns() %}
    {{ return(['partner_record_id', 'partner_person_id', 'email_sha256', 'phone_sha256', 'consent_enrichment',
               'consent_activation', 'consent_ts', 'partner_id', 'drop_date', 'delivery_id', 'delivered_at',
               'source_file', 'source_row', 'loaded_at', 'run_id']) }}
{% endmacro %}


{% macro union_partner_records() %}
    {% set tables = partner_raw_tables() %}
    {% if tables | length == 0 %}
        select {% for c in partner_record_columns() %}cast(null as varchar) as {{ c }}{{ "," if not loop.last }}{% endfor %}
        where false
    {% else %}
        {% for t in tables %}
        select {{ partner_record_columns() | join(', ') }} from raw."{{ t }}"
        {% if not loop.last %}union all{% endif %}
        {% endfor %}
    {% endif %}
{% endmacro %}


{% macro partner_attribute_lists() %}
    {# one row per record: the attributes its partner's agreement declares today that it gives a
       value for, as a list of (attribute, value). A list rather than a row per value, so that a
       model joins records to what it needs before unnesting: a join per record, not per value.
       A raw table keeps the column of an attribute an amended agreement dropped; it is left out. #}
    {% set agreed = agreement_attributes() %}
    {% set tables = partner_raw_tables() %}
    {% set selects = [] %}
    {% for t in tables %}
        {% set partner_id = t[:-('__records' | length)] %}
        {% set cols = run_query("select column_name from information_schema.columns where table_schema = 'raw' and table_name = '" ~ t ~ "' order by ordinal_position").columns[0].values() %}
        {% set attributes = agreed | selectattr(0, 'equalto', partner_id) | map(attribute=1) | select('in', cols) | list %}
        {% if attributes %}
            {% set pairs = [] %}
            {% for a in attributes %}{% do pairs.append("{'attribute': '" ~ a ~ "', 'value': \"" ~ a ~ "\"}") %}{% endfor %}
            {% do selects.append('select partner_id, drop_date, partner_record_id, list_filter([' ~ (pairs | join(', ')) ~ '], v -> v.value is not null) as attribute_values from raw."' ~ t ~ '"') %}
        {% endif %}
    {% endfor %}
    {% if selects %}
        {{ selects | join('\nunion all\n') }}
    {% else %}
        select cast(null as varchar) as partner_id, cast(null as date) as drop_date, cast(null as varchar) as partner_record_id,
               cast([] as struct(attribute varchar, value varchar)[]) as attribute_values
        where false
    {% endif %}
{% endmacro %}
