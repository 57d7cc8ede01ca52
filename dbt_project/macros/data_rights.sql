{#
  Retention and erasure as the models see them. dbt only reads: it never deletes or inserts.

  - retention: stg_pipeline__partner_drops gives every partner drop the warehouse holds its
    expires_on (drop_date + the agreement's retention_days, the one definition of the rule) and
    is_expired (expires_on on or before retention_date()); staging keeps expired rows out of every model.
  - erasure: stg_pipeline__erasure_request_keys resolves the pending erasure requests
    (raw.erasure_requests) to the suppression keys of the person's identifiers;
    stg_pipeline__erasure_keys is the suppression list (audit.erasure_suppressions) plus those keys;
    stg_pipeline__erased_rows lists every raw row, not expired, of a person on it, and staging
    anti-joins it, so the marts are right the same night.
  - the nightly data-rights step (include/partner_pipeline/data_rights.py) then does what the
    models resolved, reading the marts in models/marts/data_rights (data_rights_erasure_keys,
    data_rights_deletions: expired drops and erased rows): it adds the keys to the suppression
    list, deletes the rows listed, counts them in audit.data_deletions, queues the partners' notices.

  How an identifier is matched is defined once, as SQL macros of the warehouse (warehouse.py
  DATA_RIGHTS_MACROS, created with its tables): audit.normal_hash(value) (a hash lowercased and
  trimmed), audit.normal_person_id(value) (a partner person id trimmed) and
  audit.suppression_key(identifier). The models call them; the pipeline's SQL calls them, and
  data_rights.py runs the same macros on what it reads outside the warehouse.
#}

{% macro retention_date() -%}
    {#- The date retention is counted against: the latest business date the pipeline has built
        (the DAG passes it), never before the run's own date, so a backfill of an old date does
        not bring back what a later night let expire. -#}
    cast('{{ env_var("PIPELINE_RETENTION_DATE", env_var("PIPELINE_RUN_DATE", run_started_at.strftime("%Y-%m-%d"))) }}' as date)
{%- endmacro %}


{#- An email hashed under every hash profile of the spec (normalize_email), as a list. -#}
{% macro erasure_email_hashes(email) -%}
    [{% for profile in var('hash_profiles') %}sha256({{ normalize_email(email, "'" ~ profile ~ "'") }}){{ ", " if not loop.last }}{% endfor %}]
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
