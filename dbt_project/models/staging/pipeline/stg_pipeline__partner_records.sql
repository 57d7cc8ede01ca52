-- Valid partner rows of every partner with an agreement (ingestion quarantined the rest), typed,
-- from drops dated on or before the run's date (re-running or backfilling a date builds it as its
-- night did), not expired (macros expires_on / is_expired, as stg_pipeline__partner_drops) and not
-- of an erased person (stg_pipeline__erased_rows: the rows the data-rights step deletes after the build).
-- The retention rule is applied through the agreements (a row each) rather than through the drops
-- view: with no erasure pending the anti join's input is empty, and DuckDB then misjudges the drops
-- view's size and builds its hash join on every partner record (out of memory at 10M rows).
with partner_records as (
    select * from {{ source('pipeline', 'partner_records') }}
),

agreements as (
    select * from {{ ref('stg_pipeline__agreements') }}
),

erased_rows as (
    select * from {{ ref('stg_pipeline__erased_rows') }}
),

erased_partner_records as (
    select
        erased_rows.partner_id,
        erased_rows.drop_date,
        erased_rows.source_file,
        erased_rows.source_row
    from erased_rows
    where erased_rows.location = 'raw.partner_records'
),

final as (
    select
        partner_records.partner_id,
        partner_records.partner_record_id,
        partner_records.partner_person_id,
        partner_records.email_sha256,
        partner_records.phone_sha256,
        partner_records.seed_id,
        cast(partner_records.consent_enrichment as boolean) as has_consent_enrichment,
        cast(partner_records.consent_activation as boolean) as has_consent_activation,
        cast(partner_records.consent_ts as timestamptz) as consent_at,
        partner_records.drop_date,
        partner_records.delivery_id,
        partner_records.delivered_at,
        partner_records.source_file,
        partner_records.source_row,
        partner_records.loaded_at,
        {{ expires_on('partner_records.drop_date', 'agreements.retention_days') }} as expires_on
    from partner_records
    inner join agreements
        on partner_records.partner_id = agreements.partner_id
    anti join erased_partner_records
        on
            partner_records.partner_id = erased_partner_records.partner_id
            and partner_records.drop_date = erased_partner_records.drop_date
            and partner_records.source_file = erased_partner_records.source_file
            and partner_records.source_row = erased_partner_records.source_row
    where
        partner_records.drop_date <= {{ run_date() }}
        and not {{ is_expired('partner_records.drop_date', 'agreements.retention_days') }}
)

select * from final
