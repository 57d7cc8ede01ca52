{#- A row's key is what it was made from too, so dbt's merge needs one DELETE action only (DuckLake
    allows one per statement): a changed profile's new row is a new key, inserted; its old row is
    selected as it is, matched and deleted, as are the rows no longer wanted. -#}
{{ config(
    materialized='incremental',
    incremental_strategy='merge',
    unique_key=['profile_id', 'hash_profile', 'default_country_code', 'source_hash', 'code_md5'],
    merge_clauses={'when_matched': [{'action': 'delete'}], 'when_not_matched': [{'action': 'insert', 'mode': 'by_name'}]},
    on_schema_change='sync_all_columns',
) }}
{#- What a row's hashes were made by: this file and the normalization macros as compiled
    (model_code_md5). A change to either makes every row again, as a full refresh would. -#}
{%- set email_normalized = normalize_email('changed.email', 'changed.hash_profile') -%}
{%- set phone_normalized = normalize_phone('changed.phone', 'changed.hash_profile', 'changed.default_country_code') -%}
{%- set code_md5 = model_code_md5(email_normalized ~ phone_normalized) -%}
-- Every profile's email and phone, normalized and hashed under each (hash profile, default
-- country code) an agreement uses: what partner hashes are matched against (read through
-- int_profile_identifiers). Destinations' hashes are made in activation_audiences, for the members
-- sent only. Seed-set agreements count too (seed_set_members).
-- Incremental: a night normalizes and hashes only the rows whose email or phone changed (source_hash),
-- whose (hash profile, country code) is new, or that older code made (code_md5); the rows of profiles
-- that left the snapshot (or were erased) and of settings no agreement uses any more are deleted.
-- On an incremental night this selects the rows to insert and, as they are, the rows to delete.
with profiles as not materialized (
    -- read twice on an incremental night (the comparison, then the changed rows' email and phone): not held
    select
        profile_id,
        email,
        phone,
        -- what the hashes are made from, to tell a changed profile: DuckDB's 64-bit hash, not an identifier
        hash(email, phone) as source_hash
    from {{ ref('stg_first_party__profiles') }}
),

agreements as (
    select * from {{ ref('stg_pipeline__agreements') }}
),

partner_records as (
    select * from {{ ref('stg_pipeline__partner_records') }}
),

hash_settings as (
    -- only partners with records to match: an agreement with nothing delivered (or all expired) needs no hashes
    select distinct
        agreements.hash_profile,
        agreements.default_country_code
    from agreements
    where agreements.partner_id in (select partner_records.partner_id from partner_records)
    union
    -- and every agreement that receives a seed set (its members' hashes: the mart seed_set_members)
    select distinct
        agreements.hash_profile,
        agreements.default_country_code
    from agreements
    where agreements.seed_set_format is not null
),

{% if is_incremental() %}

wanted as (
    select
        profiles.profile_id,
        hash_settings.hash_profile,
        hash_settings.default_country_code,
        profiles.source_hash
    from profiles
    cross join hash_settings
),

made as (
    select
        profile_id,
        hash_profile,
        default_country_code,
        source_hash,
        code_md5
    from {{ this }}
),

-- one join of the keys and what they were made from (no email or phone: they are read below for the
-- changed rows only): a row wanted and not made as it would be now, or made and no longer wanted
compared as (
    select
        made.source_hash as made_source_hash,
        made.code_md5 as made_code_md5,
        coalesce(wanted.profile_id, made.profile_id) as profile_id,
        coalesce(wanted.hash_profile, made.hash_profile) as hash_profile,
        coalesce(wanted.default_country_code, made.default_country_code) as default_country_code,
        wanted.profile_id is not null as is_wanted
    from wanted
    full outer join made
        on
            wanted.profile_id = made.profile_id
            and wanted.hash_profile = made.hash_profile
            and wanted.default_country_code = made.default_country_code
    where
        wanted.profile_id is null
        or made.profile_id is null
        or wanted.source_hash <> made.source_hash
        or made.code_md5 <> '{{ code_md5 }}'
),

changed as (
    select
        compared.profile_id,
        compared.hash_profile,
        compared.default_country_code,
        profiles.email,
        profiles.phone,
        profiles.source_hash
    from compared
    inner join profiles on compared.profile_id = profiles.profile_id
    where compared.is_wanted
),

superseded as (
    -- a made row to delete: the profile changed or left, the setting is no longer used, or older code made it
    select
        profile_id,
        hash_profile,
        default_country_code,
        made_source_hash as source_hash,
        made_code_md5 as code_md5
    from compared
    where made_code_md5 is not null
),

{% else %}

changed as (
    select
        profiles.profile_id,
        hash_settings.hash_profile,
        hash_settings.default_country_code,
        profiles.email,
        profiles.phone,
        profiles.source_hash
    from profiles
    cross join hash_settings
),

{% endif %}

hashed as (
    select
        changed.profile_id,
        changed.hash_profile,
        changed.default_country_code,
        sha256({{ email_normalized }}) as email_sha256,
        sha256({{ phone_normalized }}) as phone_sha256,
        changed.source_hash,
        '{{ code_md5 }}' as code_md5
    from changed
),

final as (
    select * from hashed
    {%- if is_incremental() %}
    union all
    -- its key as made: the merge matches it and deletes it (its hashes are not read)
    select
        superseded.profile_id,
        superseded.hash_profile,
        superseded.default_country_code,
        null as email_sha256,
        null as phone_sha256,
        superseded.source_hash,
        superseded.code_md5
    from superseded
    {%- endif %}
)

select * from final
