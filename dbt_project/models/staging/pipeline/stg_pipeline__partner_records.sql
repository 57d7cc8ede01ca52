-- Valid partner rows of every partner with an agreement (ingestion quarantined the rest), typed,
-- from drops dated on or before the run's date (re-running or backfilling a date builds it as its
-- night did) and still within the agreement's retention (an expired row is never carried forward).
with unioned as (
    {{ union_partner_records() }}
)

select
    partner_id,
    partner_record_id,
    partner_person_id,
    email_sha256,
    phone_sha256,
    cast(consent_enrichment as boolean) as has_consent_enrichment,
    cast(consent_activation as boolean) as has_consent_activation,
    cast(consent_ts as timestamptz) as consent_at,
    cast(drop_date as date) as drop_date,
    delivery_id,
    cast(delivered_at as timestamptz) as delivered_at,
    source_file,
    cast(source_row as bigint) as source_row,
    cast(loaded_at as timestamptz) as loaded_at
from unioned
inner join {{ ref('stg_pipeline__agreements') }} as agreements using (partner_id)
where cast(drop_date as date) <= {{ run_date() }}
    and cast(drop_date as date) + agreements.retention_days * interval 1 day > {{ retention_date() }}
