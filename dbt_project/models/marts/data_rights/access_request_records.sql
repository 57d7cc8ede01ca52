{{ config(materialized='view') }}
-- Per pending access request, the partner records matched to its subjects (access_request_subjects),
-- each with its provenance: what an access export lists per partner under "records". Only the rows
-- of those profiles, read when the export is written: a view, so no copy of the matched records
-- lands in the marts file or the analysts' copy.
with access_request_subjects as (
    select * from {{ ref('access_request_subjects') }}
),

partner_records_matched as (
    select * from {{ ref('int_partner_records_matched') }}
),

-- the records' hashes (the matched records keep none)
partner_records as (
    select * from {{ ref('stg_pipeline__partner_records') }}
),

-- what we keep of each matched record: the export holds all of it
final as (
    select
        partner_records_matched.partner_id,
        partner_records_matched.drop_date,
        partner_records_matched.partner_record_id,
        partner_records_matched.partner_person_id,
        partner_records.email_sha256,
        partner_records.phone_sha256,
        partner_records_matched.has_consent_enrichment,
        partner_records_matched.has_consent_activation,
        partner_records_matched.consent_at,
        partner_records_matched.delivery_id,
        partner_records_matched.loaded_at,
        partner_records_matched.source_row,
        partner_records_matched.seed_id,
        partner_records_matched.match_status,
        partner_records_matched.profile_id,
        access_request_subjects.request_id
    from access_request_subjects
    inner join partner_records_matched on access_request_subjects.profile_id = partner_records_matched.profile_id
    inner join partner_records
        on
            partner_records_matched.partner_id = partner_records.partner_id
            and partner_records_matched.drop_date = partner_records.drop_date
            and partner_records_matched.partner_record_id = partner_records.partner_record_id
)

select * from final
