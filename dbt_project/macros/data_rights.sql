{#
  Retention and erasure as the models see them. dbt only reads: it never deletes or inserts.

  - retention: stg_pipeline__partner_drops gives every partner drop the warehouse holds its
    expires_on (drop_date + the agreement's retention_days, the one definition of the rule) and
    is_expired (expires_on on or before retention_date()); staging keeps expired rows out of every model.
  - erasure: int_erasure_identifiers resolves the pending erasure requests (raw.erasure_requests)
    to the suppression keys of the person's identifiers; int_data_rights_deletions lists every raw
    row that retention or the suppression list (audit.erasure_suppressions plus tonight's keys)
    takes away; staging anti-joins it, so the marts are right the same night.
  - the nightly data-rights step (include/partner_pipeline/data_rights.py) then does what the
    models resolved: adds the keys to the suppression list, deletes the rows listed, counts them
    in audit.data_deletions, queues the partners' notices.

  The suppression key is the SQL macro audit.suppression_key(identifier), created once with the
  warehouse's tables (warehouse.py _SCHEMA); models and the pipeline's own SQL both call it.
#}

{% macro retention_date() -%}
    {#- The date retention is counted against: the latest business date the pipeline has built
        (the DAG passes it), never before the run's own date, so a backfill of an old date does
        not bring back what a later night let expire. -#}
    cast('{{ env_var("PIPELINE_RETENTION_DATE", env_var("PIPELINE_RUN_DATE", run_started_at.strftime("%Y-%m-%d"))) }}' as date)
{%- endmacro %}


{#- The one SQL definition of how an identifier is normalized before it is keyed or matched; the
    Python twin is data_rights.normal_hash / data_rights.normal_person_id (keep both alike). A malformed row
    (uppercase or padded hash, kept in quarantine as evidence) still names the person: hashes are
    compared lowercased and trimmed, partner person ids trimmed, empty means absent. -#}
{% macro erasure_hash(value) -%}
    nullif(lower(trim({{ value }}, ' ' || chr(9) || chr(10) || chr(13))), '')
{%- endmacro %}

{% macro erasure_person_id(person) -%}
    nullif(trim({{ person }}, ' ' || chr(9) || chr(10) || chr(13)), '')
{%- endmacro %}

{% macro erasure_person(partner_id, person) -%}
    ({{ partner_id }} || ':' || {{ erasure_person_id(person) }})
{%- endmacro %}


{% macro erasure_email_hashes(email) -%}
    [{% for profile in var('hash_profiles') %}sha256({{ normalize_email(email, "'" ~ profile ~ "'") }}){{ ", " if not loop.last }}{% endfor %}]
{%- endmacro %}


{#- A partner row's three suppression keys, as a list of {kind, key} (unnest it, then equi-join the list). -#}
{% macro erasure_row_keys(partner_id, email, phone, person) -%}
    [{'kind': 'email_sha256', 'key': audit.suppression_key({{ erasure_hash(email) }})},
     {'kind': 'phone_sha256', 'key': audit.suppression_key({{ erasure_hash(phone) }})},
     {'kind': 'partner_person', 'key': audit.suppression_key({{ erasure_person(partner_id, person) }})}]
{%- endmacro %}


{#- The retention rule, defined once: a partner drop dated d of an agreement keeping rows n days
    expires on d + n days, and is expired from the first night whose retention_date() is on or after
    that. stg_pipeline__partner_drops computes it per drop (which the data-rights step deletes by). -#}
{% macro expires_on(drop_date, retention_days) -%}
    cast({{ drop_date }} + {{ retention_days }} * interval 1 day as date)
{%- endmacro %}

{% macro is_expired(drop_date, retention_days) -%}
    ({{ expires_on(drop_date, retention_days) }} <= {{ retention_date() }})
{%- endmacro %}
