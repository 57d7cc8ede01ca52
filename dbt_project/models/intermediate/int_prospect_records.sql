-- The partner persons who may be prospects: the latest record of each person of a partner whose
-- agreement labels some attribute `prospecting`, where that record carries the agreement's
-- required consents and consent_activation, is within retention, and no record of the person
-- matched (or was ambiguous about) any of our profiles (int_partner_records_matched's status).
-- Matching runs over every record each night, so a person who becomes our customer leaves here the
-- night the profile appears; erased rows and withdrawn consent leave with the records themselves.
-- Its one join with the partner records builds its hash table on the prospects, written on the right:
-- DuckDB underestimates the staging view of the records (see int_partner_records_matched).
{{ config(
    pre_hook="set disabled_optimizers = 'build_side_probe_side'",
    post_hook="reset disabled_optimizers",
) }}

with agreements as (
    select * from {{ ref('stg_pipeline__agreements') }}
),

agreement_attributes as (
    select * from {{ ref('stg_pipeline__agreement_attributes') }}
),

-- read by known_persons and latest_records: inlined (a scan each), never copied
matched_records as not materialized (
    select * from {{ ref('int_partner_records_matched') }}
),

-- the hashes of the prospects' records (the matched records keep none)
partner_records as (
    select * from {{ ref('stg_pipeline__partner_records') }}
),

prospecting_partners as (
    select distinct partner_id
    from agreement_attributes
    where list_contains(policy_labels, 'prospecting') and not list_contains(policy_labels, 'special_category')
),

-- a person any of whose records hit one of our profiles, by whatever means, is never a prospect
known_persons as (
    select distinct
        partner_id,
        partner_person_id
    from matched_records
    where match_status != 'unmatched'
),

latest_records as (
    select matched_records.*
    from matched_records
    inner join prospecting_partners using (partner_id)
    qualify
        row_number() over (
            partition by matched_records.partner_id, matched_records.partner_person_id
            order by matched_records.drop_date desc, matched_records.consent_at desc, matched_records.partner_record_id desc
        ) = 1
),

prospects as (
    select
        latest_records.partner_id,
        latest_records.partner_person_id,
        latest_records.drop_date,
        latest_records.partner_record_id,
        agreements.hash_profile,
        agreements.default_country_code
    from latest_records
    inner join agreements using (partner_id)
    anti join known_persons using (partner_id, partner_person_id)
    where latest_records.has_consent_enrichment
        and latest_records.has_consent_activation
        and not {{ is_expired('latest_records.drop_date', 'agreements.retention_days') }}
),

-- the partner records stream through a hash table of the prospects (see the hooks above)
final as (
    select
        prospects.partner_id,
        prospects.partner_person_id,
        prospects.drop_date,
        prospects.partner_record_id,
        prospects.hash_profile,
        prospects.default_country_code,
        partner_records.email_sha256,
        partner_records.phone_sha256
    from partner_records
    inner join prospects
        on
            partner_records.partner_id = prospects.partner_id
            and partner_records.drop_date = prospects.drop_date
            and partner_records.partner_record_id = prospects.partner_record_id
)

select * from final
