{#
  Retention and erasure, enforced at the start of every dbt build (on-run-start in
  dbt_project.yml), before any model reads the raw tables:

  1. retention: partner rows whose drop_date + the agreement's retention_days is on or before
     retention_date() are deleted from raw.<partner>__records and raw.quarantined_rows. The
     models never carry an expired row forward either (stg_pipeline__partner_records filters
     them), so the marts drop them the same night.
  2. erasure requests still pending (raw.erasure_requests, loaded by the DAG) are resolved to
     the identifiers of the person: our profile ids, their email hashed under every hash
     profile, their phone under every (hash profile, country code) in use, and the partner
     persons whose records carry those hashes. Their keys, sha256('erasure:' || identifier) so that
     the list itself holds no identifier, go to the suppression list audit.erasure_suppressions for good.
  3. the suppression list is applied to the raw tables and raw.quarantined_rows: whatever a later load,
     re-run or backfill brought back of an erased person is deleted again before any model runs, and
     each partner whose rows were deleted goes to audit.pending_erasure_notices (the DAG writes the
     outbox files, then empties it): a partner that sends an erased person again is told again.
  Identifiers are compared normalized (erasure_hash / erasure_person below), as privacy.py does for
  the quarantined copies in object storage.

  Every deletion is counted in audit.data_deletions (counts, never identifiers).
#}

{% macro retention_date() -%}
    {#- The date retention is counted against: the latest business date the pipeline has built
        (the DAG passes it), never before the run's own date, so a backfill of an old date does
        not bring back what a later night let expire. -#}
    cast('{{ env_var("PIPELINE_RETENTION_DATE", env_var("PIPELINE_RUN_DATE", run_started_at.strftime("%Y-%m-%d"))) }}' as date)
{%- endmacro %}


{% macro enforce_data_rights() %}
    {%- if execute and flags.WHICH in ('build', 'run') -%}
        {%- set present = run_query("select count(*) from information_schema.tables where table_schema = 'raw' and table_name in ('agreements', 'first_party_profiles')").columns[0].values()[0] -%}
        {%- if present == 2 -%}
            {%- do purge_expired_partner_data() -%}
            {%- do resolve_erasure_requests() -%}
            {%- do apply_erasure_suppressions() -%}
        {%- endif -%}
    {%- endif -%}
    select 1
{% endmacro %}


{% macro _audit_deletions(reason, location, select_counts) %}
    {% do run_query("insert into audit.data_deletions " ~ select_counts.replace('{meta}',
        "now(), '" ~ env_var('PIPELINE_RUN_ID', '') ~ "', '" ~ reason ~ "'") ) %}
{% endmacro %}


{% macro purge_expired_partner_data() %}
    {%- set partners = run_query("select a.partner_id, a.retention_days from raw.agreements a join information_schema.tables t on t.table_schema = 'raw' and t.table_name = a.partner_id || '__records' order by 1") -%}
    {%- for partner_id, retention_days in partners.rows %}
        {%- set expired = "partner_id = '" ~ partner_id ~ "' and drop_date + " ~ retention_days ~ " * interval 1 day <= " ~ retention_date() %}
        {%- for location, table in [('raw.' ~ partner_id ~ '__records', 'raw."' ~ partner_id ~ '__records"'), ('raw.quarantined_rows', 'raw.quarantined_rows')] %}
            {%- do _audit_deletions('retention', location,
                "select {meta}, null, '" ~ location ~ "', partner_id, drop_date, count(*) from " ~ table ~ " where " ~ expired ~ " group by all") %}
            {%- do run_query("delete from " ~ table ~ " where " ~ expired) %}
        {%- endfor %}
    {%- endfor %}
{% endmacro %}


{% macro suppression_key(identifier) -%}
    sha256('erasure:' || ({{ identifier }}))
{%- endmacro %}


{#- The one SQL definition of how an identifier is normalized before it is keyed or matched; the
    Python twin is privacy.normal_hash / privacy.normal_person_id (keep both alike). A malformed row
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


{% macro _email_hashes(email) -%}
    [{% for profile in var('hash_profiles') %}sha256({{ normalize_email(email, "'" ~ profile ~ "'") }}){{ ", " if not loop.last }}{% endfor %}]
{%- endmacro %}


{% macro resolve_erasure_requests() %}
    {%- set pending = "select * from raw.erasure_requests where request_id not in (select request_id from audit.data_subject_requests where request_type = 'erasure' and status = 'done')" -%}
    {%- if run_query("select count(*) from (" ~ pending ~ ")").columns[0].values()[0] == 0 %}{{ return('') }}{% endif -%}
    {%- set phone_settings = "select hash_profile, default_country_code from raw.agreements" ~ (
        " union select hash_profile, default_country_code from raw.destinations"
        if run_query("select count(*) from information_schema.tables where table_schema = 'raw' and table_name = 'destinations'").columns[0].values()[0] else "") -%}
    {% do run_query("""
        create or replace temp table erasure_people as
        with pending as (""" ~ pending ~ """),
        requested_hashes as (
            select request_id, unnest(list_append(""" ~ _email_hashes('email') ~ """, email_sha256)) as email_hash
            from pending
        ),
        profiles as (
            select profile_id, email, phone, unnest(""" ~ _email_hashes('email') ~ """) as email_hash
            from raw.first_party_profiles
        )
        select distinct pending.request_id, profiles.profile_id
        from pending join profiles on pending.profile_id = profiles.profile_id
        union
        select distinct requested_hashes.request_id, profiles.profile_id
        from requested_hashes join profiles using (email_hash)
        where email_hash is not null
    """) %}
    {% do run_query("""
        create or replace temp table erasure_identifiers as
        with pending as (""" ~ pending ~ """),
        phone_settings as (""" ~ phone_settings ~ """),
        people as (
            select erasure_people.request_id, profiles.profile_id, profiles.email, profiles.phone
            from erasure_people join raw.first_party_profiles as profiles using (profile_id)
        )
        select request_id, 'profile_id' as identifier_kind, profile_id as identifier from pending where profile_id is not null
        union select request_id, 'profile_id', profile_id from people
        union select request_id, 'email_sha256', unnest(""" ~ _email_hashes('email') ~ """) from pending
        union select request_id, 'email_sha256', email_sha256 from pending
        union select request_id, 'email_sha256', unnest(""" ~ _email_hashes('email') ~ """) from people
        union select request_id, 'phone_sha256', sha256(""" ~ normalize_phone('phone', 'phone_settings.hash_profile', 'phone_settings.default_country_code') ~ """)
              from people cross join phone_settings
    """) %}
    {#- the partner persons whose rows carry those hashes, in loaded and in quarantined rows -#}
    {%- set sources = [] -%}
    {%- for table in partner_raw_tables() %}
        {%- do sources.append(('raw."' ~ table ~ '"', 'email_sha256', 'phone_sha256', 'partner_person_id')) %}
    {%- endfor %}
    {%- do sources.append(('raw.quarantined_rows', "record->>'email_sha256'", "record->>'phone_sha256'", "record->>'partner_person_id'")) %}
    {%- for table, email, phone, person in sources %}
        {% do run_query("""
            insert into erasure_identifiers
            select distinct ids.request_id, 'partner_person', records.person
            from (select """ ~ erasure_person('partner_id', person) ~ """ as person, """ ~ erasure_hash(email) ~ """ as email,
                         """ ~ erasure_hash(phone) ~ """ as phone from """ ~ table ~ """) as records
            join erasure_identifiers as ids
              on ids.identifier in (records.email, records.phone)
             and ids.identifier_kind in ('email_sha256', 'phone_sha256')
            where records.person is not null
        """) %}
    {%- endfor %}
    {% do run_query("""
        insert into audit.erasure_suppressions
        select found.*, now()
        from (select distinct request_id, identifier_kind, """ ~ suppression_key('identifier') ~ """ as suppression_key
              from erasure_identifiers where identifier is not null) as found
        anti join audit.erasure_suppressions using (request_id, identifier_kind, suppression_key)
    """) %}
{% endmacro %}


{% macro apply_erasure_suppressions() %}
    {%- if run_query("select count(*) from audit.erasure_suppressions").columns[0].values()[0] == 0 %}{{ return('') }}{% endif -%}
    {%- set suppressed = "select request_id, identifier_kind, suppression_key from audit.erasure_suppressions" -%}
    {%- set targets = [] -%}
    {%- for table in partner_raw_tables() %}
        {%- do targets.append(('raw.' ~ table, 'raw."' ~ table ~ '"', "email_sha256", "phone_sha256", "partner_person_id")) %}
    {%- endfor %}
    {%- do targets.append(('raw.quarantined_rows', 'raw.quarantined_rows', "record->>'email_sha256'", "record->>'phone_sha256'",
        "record->>'partner_person_id'")) %}
    {%- for location, table, email, phone, person in targets %}
        {#- each row's three keys once (an equi-join, not a key computed per row and suppression), then the
            matches serve the audit count, the partner's notice and the delete -#}
        {% do run_query("""
            create or replace temp table erasure_hits as
            select distinct t.rid, s.request_id, t.partner_id, t.drop_date, t.person, t.email
            from (select rid, partner_id, drop_date, person, email, unnest([
                         {'kind': 'email_sha256', 'key': """ ~ suppression_key('email') ~ """},
                         {'kind': 'phone_sha256', 'key': """ ~ suppression_key('phone') ~ """},
                         {'kind': 'partner_person', 'key': """ ~ suppression_key("partner_id || ':' || person") ~ """}]) as k
                  from (select rowid as rid, partner_id, drop_date,
                               """ ~ erasure_person_id(person) ~ """ as person,
                               """ ~ erasure_hash(email) ~ """ as email, """ ~ erasure_hash(phone) ~ """ as phone
                        from """ ~ table ~ """)) as t
            join (""" ~ suppressed ~ """) as s on s.identifier_kind = t.k.kind and s.suppression_key = t.k.key
        """) %}
        {%- do _audit_deletions('erasure', location,
            "select {meta}, request_id, '" ~ location ~ "', partner_id, drop_date, count(distinct rid) from erasure_hits group by all") %}
        {% do run_query("""
            insert into audit.pending_erasure_notices
            select request_id, partner_id, person, max(email) from erasure_hits
            group by all having person is not null or max(email) is not null
            except select * from audit.pending_erasure_notices
        """) %}
        {%- do run_query("delete from " ~ table ~ " where rowid in (select rid from erasure_hits)") %}
    {%- endfor %}
    {#- first party: by profile id, or by the canonical email hash (the same person under a new profile id) -#}
    {%- set fp_hit = "(s.identifier_kind = 'profile_id' and s.suppression_key = " ~ suppression_key('t.profile_id') ~ ") or (s.identifier_kind = 'email_sha256' and s.suppression_key = " ~ suppression_key("sha256(" ~ normalize_email('t.email', "'canonical'") ~ ")") ~ ")" %}
    {%- do _audit_deletions('erasure', 'raw.first_party_profiles',
        "select {meta}, s.request_id, 'raw.first_party_profiles', null, null, count(distinct t.rowid) from raw.first_party_profiles t join (" ~ suppressed ~ ") s on " ~ fp_hit ~ " group by all") %}
    {%- do run_query("delete from raw.first_party_profiles t where exists (select 1 from (" ~ suppressed ~ ") s where " ~ fp_hit ~ ")") %}
{% endmacro %}
