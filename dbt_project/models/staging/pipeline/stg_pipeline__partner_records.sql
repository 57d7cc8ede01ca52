-- Valid partner rows of every partner with an agreement (ingestion quarantined the rest), typed,
-- from drops dated on or before the run's date (re-running or backfilling a date builds it as its
-- night did), not expired (stg_pipeline__partner_drops) and not of an erased person
-- (int_data_rights_deletions: the rows the data-rights step deletes after the build).
select
    records.partner_id,
    records.partner_record_id,
    records.partner_person_id,
    records.email_sha256,
    records.phone_sha256,
    cast(records.consent_enrichment as boolean) as has_consent_enrichment,
    cast(records.consent_activation as boolean) as has_consent_activation,
    cast(records.consent_ts as timestamptz) as consent_at,
    records.drop_date,
    records.delivery_id,
    records.delivered_at,
    records.source_file,
    records.source_row,
    records.loaded_at,
    drops.expires_on
from {{ source('pipeline', 'partner_records') }} as records
inner join {{ ref('stg_pipeline__partner_drops') }} as drops using (partner_id, drop_date)
anti join (
    select partner_id, drop_date, source_file, source_row from {{ ref('int_data_rights_deletions') }}
    where location = 'raw.partner_records'
) as deleted using (partner_id, drop_date, source_file, source_row)
where records.drop_date <= {{ run_date() }}
    and not drops.is_expired
